"""Prompt masking and truncation with the real SmolLM2 tokenizer."""

import pytest

from fedit.data import Example
from fedit.data.prompts import IGNORE_INDEX, build_prompt, tokenize_example, tokenize_examples, TokenizeReport

LONG_CONTEXT = " ".join(f"Sentence number {i} talks about rivers and mountains." for i in range(200))


def ex(instruction="Name a colour.", context="", response="Blue is a colour.", category="open_qa"):
    return Example(instruction, context, response, category)


@pytest.mark.parametrize("template", ["chat", "alpaca"])
def test_loss_only_on_response_tokens(tiny_tokenizer, template):
    tok = tokenize_example(tiny_tokenizer, ex(), template=template, max_len=256)
    prompt = build_prompt(tiny_tokenizer, "Name a colour.", "", template)
    n_prompt = len(tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert tok.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert tok.labels[n_prompt:] == tok.input_ids[n_prompt:]
    answer = tiny_tokenizer.decode(tok.input_ids[n_prompt:])
    assert answer.startswith("Blue is a colour.")
    assert answer.rstrip().endswith(tiny_tokenizer.eos_token)   # the model learns to stop


def test_train_on_prompt_labels_everything(tiny_tokenizer):
    tok = tokenize_example(tiny_tokenizer, ex(), template="chat", max_len=256, train_on_prompt=True)
    assert tok.labels == tok.input_ids


def test_truncation_cuts_context_first_and_keeps_response(tiny_tokenizer):
    report = TokenizeReport()
    record = ex(instruction="Summarize the text.", context=LONG_CONTEXT, response="Rivers and mountains.")
    tok = tokenize_example(tiny_tokenizer, record, template="chat", max_len=128, report=report)
    assert len(tok.input_ids) <= 128
    assert report.n_context_cut == 1 and report.n_response_cut == 0
    text = tiny_tokenizer.decode(tok.input_ids)
    assert "Summarize the text." in text and "Sentence number 0 " in text and "Sentence number 150" not in text
    full = tokenize_example(tiny_tokenizer, ex(response="Rivers and mountains."), template="chat", max_len=128)
    n_resp = sum(1 for t in full.labels if t != IGNORE_INDEX)
    assert tok.labels[-n_resp:] == full.labels[-n_resp:]      # the whole response survived


def test_long_response_is_cut_not_dropped(tiny_tokenizer):
    report = TokenizeReport()
    tok = tokenize_example(tiny_tokenizer, ex(response=LONG_CONTEXT), template="chat", max_len=64, report=report)
    assert len(tok.input_ids) == 64 and report.n_response_cut == 1
    assert tok.num_loss_tokens > 0


def test_no_room_for_response_is_skipped_and_counted(tiny_tokenizer):
    records = [ex(instruction=LONG_CONTEXT), ex()]
    toks, report = tokenize_examples(tiny_tokenizer, records, template="alpaca", max_len=64)
    assert len(toks) == 1 and report.n_skipped == 1 and report.n_examples == 1
    assert all(t.num_loss_tokens > 0 for t in toks)   # never a NaN loss
