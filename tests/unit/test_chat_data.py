"""Chat records (messages, ShareGPT conversations), --columns, --data hub:ORG/NAME[:split] and
--partition by-field:FIELD: parsing, one-line errors with file and record, loss on assistant
turns only, and partition files that load again unchanged."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from fedit.config import Config, DataConfig, parse_columns
from fedit.data import Example, load_examples, load_source, make_partitioner, partition_stats, write_partition
from fedit.data.prompts import IGNORE_INDEX, tokenize_example
from fedit.errors import ConfigError, DataError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Sky colour?"},
        {"role": "assistant", "content": "Blue."}]


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def error_of(tmp_path: Path, record: object, **kw) -> str:
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "a"},
                                                               {"role": "assistant", "content": "b"}]}, record])
    with pytest.raises(DataError) as info:
        load_examples(path, **kw)
    assert "\n" not in str(info.value)
    return str(info.value).removeprefix(f"{path}: record 2 (line 2)")


def test_messages_and_sharegpt_records(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": CHAT, "category": "chit-chat", "user": "u7"},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}], "user": 3},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "trailing, no answer"}]},
    ])
    multi, plain, trailing = load_examples(path)[0]
    assert (multi.instruction, multi.response, multi.category) == ("Hi?", "Blue.", "chit-chat")
    assert multi.messages == tuple((m["role"], m["content"]) for m in CHAT)
    assert multi.extra == (("user", "u7"),) and multi.field_value("user") == "u7"
    # a plain exchange is an instruction record: same as its Dolly form, no turns kept
    assert plain == Example("2+2?", "", "4", "uncategorized") and plain.messages is None
    assert plain.field_value("user") == 3
    assert trailing.messages is None and trailing.response == "Hello."   # trailing user turn dropped


@pytest.mark.parametrize("record, message", [
    ({"messages": {"role": "user"}}, ": field 'messages' must be an array of turns, got object"),
    ({"messages": []}, ": field 'messages' is empty"),
    ({"messages": ["hi"]}, ": messages[0] must be an object with 'role' and 'content', got string"),
    ({"messages": [{"role": "user"}]}, ": messages[0]: missing field 'content'"),
    ({"messages": [{"role": "user", "content": None}]}, ": messages[0].content must be a string, got null"),
    ({"messages": [{"role": "bot", "content": "x"}]}, ": messages[0].role 'bot' is not one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]},
     ": messages[1]: a system turn may only come first"),
    ({"messages": [{"role": "user", "content": "x"}]}, ": messages has no assistant turn to train on"),
    ({"messages": [{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}]},
     ": messages[1] is an assistant turn with no user turn before it"),
    ({"conversations": [{"from": "robot", "value": "x"}]},
     ": conversations[0].from 'robot' is not one of system, human, user, gpt, assistant, chatgpt"),
    ({"conversations": [{"from": "human", "content": "x"}]}, ": conversations[0]: missing field 'value'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "category": 3},
     ": field 'category' must be a string, got int"),
])
def test_chat_validation_errors_name_file_record_and_turn(tmp_path, record, message):
    assert error_of(tmp_path, record) == message


def test_tokenized_conversation_trains_on_assistant_turns_only(tiny_tokenizer):
    example = Example("Hi?", "", "Blue.", "c", messages=tuple((m["role"], m["content"]) for m in CHAT))
    tok = tokenize_example(tiny_tokenizer, example, template="chat", max_len=256)
    assert tiny_tokenizer.decode(tok.input_ids) == tiny_tokenizer.apply_chat_template(CHAT, tokenize=False)
    trained = tiny_tokenizer.decode([t for t in tok.labels if t != IGNORE_INDEX])
    assert trained == "Hello.<|im_end|>\nBlue.<|im_end|>\n"
    alpaca = tokenize_example(tiny_tokenizer, example, template="alpaca", max_len=256)
    assert tiny_tokenizer.decode(alpaca.input_ids) == (
        "Be brief.\n\n### Instruction:\nHi?\n\n### Response:\nHello.<|im_end|>"
        "\n\n### Instruction:\nSky colour?\n\n### Response:\nBlue.<|im_end|>")
    assert tiny_tokenizer.decode([t for t in alpaca.labels if t != IGNORE_INDEX]) == "Hello.<|im_end|>Blue.<|im_end|>"
    cut = tokenize_example(tiny_tokenizer, example, template="chat", max_len=len(tok.input_ids) - 4)
    assert cut.labels == tok.labels[:len(tok.input_ids) - 4]          # cut from the end
    first = next(i for i, t in enumerate(tok.labels) if t != IGNORE_INDEX)
    assert tokenize_example(tiny_tokenizer, example, template="chat", max_len=first) is None  # no assistant token
    assert tokenize_example(tiny_tokenizer, example, template="chat", max_len=first + 1).labels[-1] != IGNORE_INDEX


def test_a_plain_exchange_tokenizes_like_its_instruction_record(tiny_tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"messages": CHAT[1:3]}, {"instruction": "Hi?", "response": "Hello."}])
    chat, dolly = (tokenize_example(tiny_tokenizer, e, template="chat", max_len=64)
                   for e in load_examples(path, dedupe=False)[0])
    assert chat == dolly


def test_partition_files_keep_turns_and_extra_fields(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": CHAT, "user": "u2"}, {"instruction": "Name a colour.", "response": "Red.", "user": "u10"},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}], "user": "u2"}])
    examples, _ = load_examples(path)
    partitioner = make_partitioner("by-field:user", num_partitions=1)
    parts = [[examples[i] for i in part] for part in partitioner.partition(examples)]
    assert partitioner.values == ["u2", "u10"] and [len(p) for p in parts] == [2, 1]
    assert partition_stats(parts)["clients"][0]["categories"] == {"uncategorized": 2}
    write_partition(parts, tmp_path / "out")
    again, _ = load_examples(tmp_path / "out" / "clients")
    assert again == [e for part in parts for e in part]
    assert [e.extra for e in again] == [e.extra for part in parts for e in part]
    assert json.loads((tmp_path / "out" / "clients" / "client_000.json").read_text())[0]["messages"][0] == CHAT[0]


def test_by_field_errors_and_config(tmp_path):
    examples = [Example("q1", "", "a", "k", source="a.json", extra=(("user", "x"),)),
                Example("q2", "", "a", "k", source="b.json")]
    with pytest.raises(ConfigError, match=r"^--partition by-field:user: 1 of 2 records have no 'user' field "
                                          r"\(first in b.json: 'q2'\); add it to every record or choose another "
                                          r"--partition$"):
        make_partitioner("by-field:user", num_partitions=1).partition(examples)
    assert make_partitioner("by-field:category", num_partitions=1).partition(examples) == [[0, 1]]
    with pytest.raises(ConfigError, match="^--partition: 'by-field:' is not one of iid, dirichlet, shards, files, "
                                          "by-field:FIELD$"):
        DataConfig(partition="by-field:")
    # the client count comes from the data: --clients-per-round is not checked against --num-clients
    Config().override({"partition": "by-field:user", "num_clients": 1, "clients_per_round": 5})


def test_columns_rename_fields(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A.", "topic": "t", "uid": "7"}])
    examples, _ = load_examples(path, columns="instruction=question,response=answer,category=topic")
    assert examples == [Example("Q?", "", "A.", "t")] and examples[0].extra == (("uid", "7"),)
    write_jsonl(path, [{"question": "Q1", "answer": "A1"}, {"question": "Q?"}])
    with pytest.raises(DataError, match=r"qa.jsonl: record 2 \(line 2\): missing column 'answer' "
                                        r"\(--columns response=answer\)$"):
        load_examples(path, columns="instruction=question,response=answer")
    assert parse_columns(" instruction = q , ") == {"instruction": "q"}
    with pytest.raises(ConfigError, match="^--columns: expected FIELD=COLUMN pairs separated by commas, got 'q'$"):
        DataConfig(columns="q")


def fake_datasets(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


def test_hub_dataset_rows_are_mapped_and_validated(monkeypatch):
    calls = []

    def load(name, split):
        calls.append((name, split))
        return [{"prompt": "Q1", "completion": "A1"}, {"prompt": "Q2", "completion": 5}]

    fake_datasets(monkeypatch, load)
    with pytest.raises(DataError, match=r"^hf://datasets/org/qa\[test\]: record 2 \(index 1\): field 'response' must "
                                        r"be a string, got int$"):
        load_source("hub:org/qa:test", columns="instruction=prompt,response=completion")
    assert calls == [("org/qa", "test")]
    fake_datasets(monkeypatch, lambda name, split: [{"messages": CHAT}])
    examples, report = load_source("hub:org/chat")
    assert examples[0].messages is not None and examples[0].source == "org/chat"
    assert report.files == ["hf://datasets/org/chat[train]"]


def test_hub_offline_is_one_clear_line(monkeypatch):
    def offline(name, split):
        raise ConnectionError("Couldn't reach 'org/qa' on the Hub (LocalEntryNotFoundError)\nmore detail")

    fake_datasets(monkeypatch, offline)
    with pytest.raises(DataError) as info:
        load_source("hub:org/qa")
    assert str(info.value) == ("hub:org/qa: cannot load org/qa (train) from the Hugging Face hub (Couldn't reach "
                               "'org/qa' on the Hub (LocalEntryNotFoundError)); download it elsewhere and pass its "
                               "data files or folder")
    with pytest.raises(DataError, match=r"^hub:qa: expected hub:ORG/NAME or hub:ORG/NAME:SPLIT \(a Hugging Face "
                                        r"dataset id\), or hub:FOLDER\[:SPLIT\] \(a local copy of one\)$"):
        load_source("hub:qa")
