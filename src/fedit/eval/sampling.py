"""Answers with the (adapted) model under ``--temperature/--top-p/--max-new-tokens/--system``:
prompt texts for instructions and conversations, batched generation, and streamed generation
for ``fedit chat`` (transformers' TextIteratorStreamer, generation in a worker thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from fedit.config import SamplingConfig
from fedit.data.prompts import build_prompt, conversation_prompt, user_message
from fedit.model import autocast

Turn = tuple[str, str]


def generation_kwargs(sampling: SamplingConfig, tokenizer) -> dict[str, Any]:
    """``model.generate`` arguments: greedy at temperature 0, else temperature + nucleus sampling."""
    kwargs: dict[str, Any] = {"max_new_tokens": sampling.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sampling.temperature > 0:
        kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def instruction_prompt(tokenizer, instruction: str, context: str, template: str, system: str | None) -> str:
    """The prompt of one instruction, exactly as training built it (plus ``--system`` if given)."""
    if system is None:
        return build_prompt(tokenizer, instruction, context, template)
    return conversation_prompt(tokenizer, [("system", system), ("user", user_message(instruction, context))],
                               template)


def with_system(turns: Sequence[Turn], system: str | None) -> list[Turn]:
    """``turns`` with ``--system`` in front (replacing a system turn the conversation has)."""
    rest = [t for t in turns if t[0] != "system"] if system is not None else list(turns)
    return ([("system", system)] if system is not None else []) + rest


@torch.no_grad()
def generate_texts(bench, prompts: Sequence[str], sampling: SamplingConfig, batch_size: int = 8,
                   on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Answers to prompt texts, in order; left-padded batches."""
    tokenizer, model = bench.tokenizer, bench.model
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[start:start + batch_size]), return_tensors="pt", padding=True,
                            add_special_tokens=False).to(bench.base.device)
            with autocast(bench.base.device, bench.base.autocast_dtype):
                out = model.generate(**enc, **generation_kwargs(sampling, tokenizer))
            new = out[:, enc["input_ids"].shape[1]:]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
            if on_batch is not None:
                on_batch(len(answers))
    finally:
        tokenizer.padding_side = side
    return answers


class StopFlag:
    """A StoppingCriteria the REPL sets on Ctrl-C to end the current answer early."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, input_ids, scores, **kwargs) -> bool:
        return self.stop


def stream_text(bench, prompt: str, sampling: SamplingConfig, stop: StopFlag) -> Iterator[str]:
    """Yield the answer to ``prompt`` piece by piece as it is generated."""
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    tokenizer = bench.tokenizer
    enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(bench.base.device)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def work() -> None:  # autocast is per thread: enter it here
        try:
            with torch.no_grad(), autocast(bench.base.device, bench.base.autocast_dtype):
                bench.model.generate(**enc, **generation_kwargs(sampling, tokenizer), streamer=streamer,
                                     stopping_criteria=StoppingCriteriaList([stop]))
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:  # also when the reader stops early (Ctrl-C): end the generation, then wait for it
        stop.stop = True
        thread.join()
    if failure:
        raise failure[0]
