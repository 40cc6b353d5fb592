"""Loading and validation of instruction records: forms, errors (file + record), dedupe, aliases."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from fedit.data import DOLLY_ENV, HUB, Example, load_examples, load_source, resolve_data_path
from fedit.errors import DataError

DOLLY_DIR = Path(__file__).resolve().parents[3] / "shared/data/dolly/shepherd_10clients"


def rec(instruction: str = "Name a colour.", response: str = "Blue.", **extra: object) -> dict[str, object]:
    return {"instruction": instruction, "response": response, **extra}


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def error_of(path: Path | str) -> str:
    with pytest.raises(DataError) as info:
        load_examples(path)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---- record forms -------------------------------------------------------------------------------

def test_dolly_and_alpaca_forms_in_one_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "mixed.json", [
        {"instruction": "Sum 2 and 3.", "context": "Arithmetic.", "response": "5", "category": "math", "id": 1},
        {"instruction": "Translate 'cat'.", "input": "to French", "output": "chat"},
        {"instruction": "Say hi.", "context": None, "response": "Hi!", "category": None},
    ])
    examples, report = load_examples(path)
    assert examples == [
        Example("Sum 2 and 3.", "Arithmetic.", "5", "math"),
        Example("Translate 'cat'.", "to French", "chat", "uncategorized"),
        Example("Say hi.", "", "Hi!", "uncategorized"),
    ]
    assert all(e.source == "mixed.json" for e in examples)
    assert (report.n_records, report.n_kept, report.files) == (3, 3, [str(path)])


def test_source_not_part_of_equality() -> None:
    a = Example("i", "c", "r", "k", source="a.json")
    b = Example("i", "c", "r", "k", source="b.json")
    assert a == b and hash(a) == hash(b)


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rec("A?")) + "\n\n" + json.dumps(rec("B?")) + "\n", encoding="utf-8")
    examples, _ = load_examples(path)
    assert [e.instruction for e in examples] == ["A?", "B?"]


# ---- validation errors name the file and record ---------------------------------------------------

@pytest.mark.parametrize(("bad", "problem"), [
    ({"response": "x"}, "missing field 'instruction'"),
    ({"instruction": "x"}, "missing field 'response' or 'output'"),
    (rec(response=3), "field 'response' must be a string, got int"),
    (rec(instruction=None), "field 'instruction' must be a string, got null"),
    (rec(response=None), "field 'response' must be a string, got null"),
    ({"instruction": "x", "output": ["a"]}, "field 'output' must be a string, got array"),
    (rec(context=1.5), "field 'context' must be a string, got float"),
    (rec(input={"a": 1}), "field 'input' must be a string, got object"),
    (rec(category=True), "field 'category' must be a string, got bool"),
    (["not", "an", "object"], "expected a JSON object, got array"),
    ("text", "expected a JSON object, got str"),
])
def test_json_record_errors(tmp_path: Path, bad: object, problem: str) -> None:
    path = write_json(tmp_path / "a.json", [rec(), rec("Second?"), bad])
    assert error_of(path) == f"{path}: record 3 (index 2): {problem}"


def test_jsonl_record_error_gives_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [rec(str(i)) for i in range(6)] + [rec(response=7)])
    assert error_of(path) == f"{path}: record 7 (line 7): field 'response' must be a string, got int"


def test_jsonl_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(rec()) + '\n{"instruction": "a", "response": }\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}: line 2, column 34: invalid JSON (Expecting value)")


def test_json_invalid_json_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('[\n  {"instruction": "a", "response": "b"},\n  {"instruction": "c",, }\n]\n', encoding="utf-8")
    assert error_of(path).startswith(f"{path}: line 3, column 23: invalid JSON")


def test_jsonl_content_in_json_file_hints_at_suffix(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "lines.json", [rec(), rec()])
    assert error_of(path).endswith("JSON Lines files must be named .jsonl")


@pytest.mark.parametrize(("data", "kind"), [({"instruction": "a"}, "object"), ("text", "str"), (3, "int")])
def test_json_not_an_array(tmp_path: Path, data: object, kind: str) -> None:
    path = write_json(tmp_path / "a.json", data)
    assert error_of(path) == f"{path}: expected a JSON array of records, got {kind}"


def test_path_errors(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.json") == f"{tmp_path / 'nope.json'}: no such file or folder"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of(empty) == f"{empty}: folder is empty"
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("hello")
    assert error_of(other) == (f"{other}: no .json, .jsonl, .csv, .parquet or .arrow files in folder (nor a "
                               "datasets save_to_disk folder)")
    assert error_of(other / "notes.txt") == (f"{other / 'notes.txt'}: expected a .json, .jsonl, .csv, .parquet or "
                                             ".arrow file, a folder of them or a datasets save_to_disk folder")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_bytes(b'[{"instruction": "\xff"}]')
    assert error_of(path) == f"{path}: not UTF-8 text (bad byte at offset 18)"


# ---- folders, dedupe, empty responses ---------------------------------------------------------------

def test_folder_loads_json_files_in_natural_order(tmp_path: Path) -> None:
    write_json(tmp_path / "part_10.json", [rec("ten")])
    write_json(tmp_path / "part_2.json", [rec("two")])
    write_jsonl(tmp_path / "part_1.jsonl", [rec("one")])
    write_json(tmp_path / ".hidden.json", [rec("hidden")])
    (tmp_path / "README.md").write_text("not data")
    examples, report = load_examples(tmp_path)
    assert [(e.instruction, e.source) for e in examples] == [
        ("one", "part_1.jsonl"), ("two", "part_2.json"), ("ten", "part_10.json")]
    assert [Path(f).name for f in report.files] == ["part_1.jsonl", "part_2.json", "part_10.json"]


def test_duplicates_and_empty_responses_dropped_and_counted(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", [rec("q1"), rec("q2", response="  \n"), rec("q1"), rec("q3"), rec("q1", context="c")])
    write_json(tmp_path / "b.json", [rec("q3"), rec("q4", response="")])
    examples, report = load_examples(tmp_path)
    assert [(e.instruction, e.context) for e in examples] == [("q1", ""), ("q3", ""), ("q1", "c")]
    assert (report.n_records, report.n_duplicates, report.n_empty_response, report.n_kept) == (7, 2, 2, 3)
    assert report.summary() == ("3 examples from 2 file(s) (7 records read, 2 duplicates and "
                                "2 empty responses dropped)")
    kept, report = load_examples(tmp_path, dedupe=False)
    assert (len(kept), report.n_duplicates, report.n_empty_response) == (5, 0, 2)


def test_no_usable_records(tmp_path: Path) -> None:
    path = write_json(tmp_path / "a.json", [rec(response="")])
    assert error_of(path).startswith(f"{path}: no usable records")
    assert error_of(write_json(tmp_path / "b.json", [])).startswith(f"{tmp_path / 'b.json'}: no usable records")


# ---- dolly alias -------------------------------------------------------------------------------------

@pytest.fixture
def fake_dolly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for i in (0, 1, 10):
        write_json(tmp_path / f"local_training_{i}.json", [rec(f"train {i}", category=f"c{i}")])
    write_json(tmp_path / "global_test.json", [rec("held out")])
    monkeypatch.setenv(DOLLY_ENV, str(tmp_path))
    return tmp_path


def test_dolly_alias_reads_training_files_only(fake_dolly: Path) -> None:
    assert [p.name for p in resolve_data_path("dolly")] == [  # type: ignore[union-attr]
        "local_training_0.json", "local_training_1.json", "local_training_10.json"]
    examples, _ = load_source("dolly")
    assert [e.source for e in examples] == ["local_training_0.json", "local_training_1.json", "local_training_10.json"]
    test, _ = load_source("dolly:test")
    assert [e.instruction for e in test] == ["held out"]


def test_dolly_alias_bad_local_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DOLLY_ENV, str(tmp_path / "missing"))
    with pytest.raises(DataError, match=f"^{DOLLY_ENV}=.*missing: no such folder$"):
        load_source("dolly")
    monkeypatch.setenv(DOLLY_ENV, str(tmp_path))
    with pytest.raises(DataError, match=r"no local_training_\*\.json in folder"):
        load_source("dolly")
    with pytest.raises(DataError, match="unknown dolly split"):
        load_source("dolly:validation")


def test_plain_path_through_load_source(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [rec()])
    assert load_source(str(path))[0] == [Example("Name a colour.", "", "Blue.", "uncategorized")]


def test_dolly_hub_unreachable_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DOLLY_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    assert resolve_data_path("dolly") == HUB
    with pytest.raises(DataError) as info:
        load_source("dolly")
    message = str(info.value)
    assert "\n" not in message and "hub is unreachable" in message and DOLLY_ENV in message


def test_dolly_hub_split_holds_out_ten_per_category(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"instruction": f"{cat} {i}", "context": "", "response": "r", "category": cat}
            for cat in ("a", "b", "c") for i in range(12)]
    rows.append(dict(rows[0]))  # a duplicate of a record that may be held out must not leak into training
    fake = types.SimpleNamespace(load_dataset=lambda name, split: rows)
    monkeypatch.delenv(DOLLY_ENV, raising=False)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    train, _ = load_source("dolly")
    test, _ = load_source("dolly:test")
    assert len(test) == 30 and sorted(e.category for e in test) == ["a"] * 10 + ["b"] * 10 + ["c"] * 10
    assert not set(train) & set(test) and len(set(train) | set(test)) == 36
    assert load_source("dolly:test")[0] == test  # seeded: the same held-out records every time


@pytest.mark.skipif(not DOLLY_DIR.is_dir(), reason=f"local dolly copy not found at {DOLLY_DIR}")
def test_real_dolly_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DOLLY_ENV, str(DOLLY_DIR))
    train, report = load_source("dolly")
    assert report.n_records == 14931 and len(report.files) == 10
    assert report.n_kept == 14931 - report.n_duplicates == len(train)
    assert len({e.source for e in train}) == 10
    test, report = load_source("dolly:test")
    assert len(test) == report.n_kept == 80
    assert not set(train) & set(test)


# ---- issue 7: inputs that escaped -------------------------------------------------------------------

def test_empty_or_whitespace_instructions_are_dropped_and_counted(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", [rec("q1"), rec(""), rec(" \t\n"), rec("q2", response=" ")])
    examples, report = load_examples(tmp_path)
    assert [e.instruction for e in examples] == ["q1"]
    assert (report.n_records, report.n_empty_instruction, report.n_empty_response, report.n_kept) == (4, 2, 1, 1)
    assert report.summary() == ("1 examples from 1 file(s) (4 records read, 0 duplicates, 1 empty responses "
                                "and 2 empty instructions dropped)")
    only_empty = write_json(tmp_path / "b.json", [rec("  ")])
    assert error_of(only_empty).startswith(f"{only_empty}: no usable records")


@pytest.mark.parametrize("name", ["deep.json", "deep.jsonl"])
def test_deeply_nested_json_is_one_line_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert error_of(path) == f"{path}: record nesting too deep to parse (is this an instruction data file?)"


def test_named_pipe_is_refused_without_reading(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)   # reading it would block forever: nobody writes
    assert error_of(fifo) == f"{fifo}: not a regular file (a pipe, device or socket cannot be --data)"
    assert error_of(Path("/dev/null.json")).endswith("no such file or folder")
