"""Prompt building and tokenization: Example -> input ids + labels (response tokens only).

Two formats: the model's own chat template (default) and the Alpaca instruction/input/response
template. Truncation to ``max_len`` cuts the context first, then the tail of the response; a
record whose prompt alone leaves no room for a response token is skipped and counted, so the
loss is never computed over zero tokens (NaN).

Chat records with several turns (``Example.messages``) carry the loss on every assistant turn
and on nothing else; they are rendered turn by turn (each assistant turn's prompt is the whole
conversation before it) and cut at ``max_len`` from the end (later turns are lost first).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from fedit.data.loading import Example
from fedit.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{context}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]          # IGNORE_INDEX on tokens that carry no loss
    category: str

    @property
    def num_loss_tokens(self) -> int:
        return sum(1 for t in self.labels[1:] if t != IGNORE_INDEX)


@dataclass
class TokenizeReport:
    n_examples: int = 0
    n_context_cut: int = 0
    n_response_cut: int = 0
    n_skipped: int = 0

    def summary(self) -> str:
        return (f"{self.n_examples} examples tokenized, context cut in {self.n_context_cut}, "
                f"response cut in {self.n_response_cut}, {self.n_skipped} skipped (no room for a "
                f"response token)")


def user_message(instruction: str, context: str) -> str:
    return f"{instruction}\n\n{context}" if context.strip() else instruction


def build_prompt(tokenizer, instruction: str, context: str, template: str) -> str:
    """The prompt text up to where the response starts."""
    if template == "alpaca":
        fmt = ALPACA_WITH_INPUT if context.strip() else ALPACA_NO_INPUT
        return fmt.format(instruction=instruction, context=context)
    messages = [{"role": "user", "content": user_message(instruction, context)}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _response_text(tokenizer, example: Example, template: str, prompt: str) -> str:
    if template == "alpaca":
        return example.response + (tokenizer.eos_token or "")
    messages = [{"role": "user", "content": user_message(example.instruction, example.context)},
                {"role": "assistant", "content": example.response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):  # templates that rewrite earlier turns: fall back to eos
        return example.response + (tokenizer.eos_token or "")
    return full[len(prompt):]


def conversation_prompt(tokenizer, turns: Sequence[tuple[str, str]], template: str) -> str:
    """The text of a conversation (ending with a user turn) up to where the next assistant turn
    starts: what chat and generation feed the model."""
    if template == "alpaca":
        return "".join(text for text, _ in _alpaca_pieces(tokenizer, turns))
    messages = [{"role": role, "content": content} for role, content in turns]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _alpaca_pieces(tokenizer, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """(text, carries loss) pieces of a conversation in Alpaca form: a preamble (the system turn,
    or Alpaca's own), then ``### Instruction:`` / ``### Response:`` blocks, one per exchange; a
    single exchange renders exactly as :data:`ALPACA_NO_INPUT` + response + eos."""
    system = turns[0][1] if turns and turns[0][0] == "system" else None
    preamble = ALPACA_NO_INPUT.split("### Instruction:")[0] if system is None else system + "\n\n"
    pieces: list[tuple[str, bool]] = [(preamble, False)]
    for role, content in turns:
        if role == "user":
            sep = "\n\n" if len(pieces) > 1 else ""
            pieces.append((f"{sep}### Instruction:\n{content}\n\n### Response:\n", False))
        elif role == "assistant":
            pieces.append((content + (tokenizer.eos_token or ""), True))
    return pieces


def _chat_pieces(tokenizer, turns: Sequence[tuple[str, str]]) -> list[tuple[str, bool]]:
    """(text, carries loss) pieces of a conversation with the model's chat template: each
    assistant turn is what the template adds after the conversation before it."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, (role, _) in enumerate(turns):
        if role != "assistant":
            continue
        prompt = conversation_prompt(tokenizer, turns[:index], "chat")
        messages = [{"role": r, "content": c} for r, c in turns[:index + 1]]
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise ConfigError("--template chat: the model's chat template rewrites earlier turns, so the loss "
                              "cannot be placed on assistant turns; use --template alpaca for multi-turn data")
        pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    return pieces


def tokenize_conversation(tokenizer, example: Example, *, template: str, max_len: int,
                          train_on_prompt: bool = False,
                          report: TokenizeReport | None = None) -> TokenizedExample | None:
    """Tokenize a multi-turn chat record: loss on assistant turns only (on every token with
    ``train_on_prompt``); cut at ``max_len``; None when no assistant token fits."""
    report = report if report is not None else TokenizeReport()
    turns = example.messages or ()
    pieces = _alpaca_pieces(tokenizer, turns) if template == "alpaca" else _chat_pieces(tokenizer, turns)
    ids: list[int] = []
    labels: list[int] = []
    assistant: list[bool] = []
    for text, trained in pieces:
        piece = _encode(tokenizer, text)
        ids += piece
        labels += piece if trained or train_on_prompt else [IGNORE_INDEX] * len(piece)
        assistant += [trained] * len(piece)
    if len(ids) > max_len:
        report.n_response_cut += 1
        ids, labels, assistant = ids[:max_len], labels[:max_len], assistant[:max_len]
    if not any(assistant[1:]):   # the first token never carries a loss (nothing predicts it)
        report.n_skipped += 1
        return None
    report.n_examples += 1
    return TokenizedExample(ids, labels, example.category)


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenize_example(tokenizer, example: Example, *, template: str, max_len: int,
                     train_on_prompt: bool = False,
                     report: TokenizeReport | None = None) -> TokenizedExample | None:
    """Tokenize one record; None when it cannot keep a single response token within max_len."""
    report = report if report is not None else TokenizeReport()
    if example.messages is not None:
        return tokenize_conversation(tokenizer, example, template=template, max_len=max_len,
                                     train_on_prompt=train_on_prompt, report=report)
    context = example.context
    prompt = build_prompt(tokenizer, example.instruction, context, template)
    response_ids = _encode(tokenizer, _response_text(tokenizer, example, template, prompt))
    prompt_ids = _encode(tokenizer, prompt)
    if len(prompt_ids) + len(response_ids) > max_len and context:
        report.n_context_cut += 1
        ctx_ids = _encode(tokenizer, context)
        while len(prompt_ids) + len(response_ids) > max_len and ctx_ids:
            overflow = len(prompt_ids) + len(response_ids) - max_len
            ctx_ids = ctx_ids[: max(0, len(ctx_ids) - overflow - 1)]
            context = tokenizer.decode(ctx_ids) if ctx_ids else ""
            prompt = build_prompt(tokenizer, example.instruction, context, template)
            prompt_ids = _encode(tokenizer, prompt)
    room = max_len - len(prompt_ids)
    if room < 1 or not response_ids:
        report.n_skipped += 1
        return None
    if len(response_ids) > room:
        report.n_response_cut += 1
        response_ids = response_ids[:room]
    report.n_examples += 1
    labels = (list(prompt_ids) if train_on_prompt else [IGNORE_INDEX] * len(prompt_ids)) + response_ids
    return TokenizedExample(prompt_ids + response_ids, labels, example.category)


def tokenize_examples(tokenizer, examples: Sequence[Example], *, template: str, max_len: int,
                      train_on_prompt: bool = False) -> tuple[list[TokenizedExample], TokenizeReport]:
    """Tokenize many records; skipped ones are counted in the report, never silently used."""
    report = TokenizeReport()
    out = []
    for ex in examples:
        tok = tokenize_example(tokenizer, ex, template=template, max_len=max_len,
                               train_on_prompt=train_on_prompt, report=report)
        if tok is not None:
            out.append(tok)
    if report.n_skipped:
        logger.warning("%d of %d records skipped: the prompt leaves no room for a response token "
                       "within --max-len %d", report.n_skipped, len(examples), max_len)
    return out, report
