"""Greedy generation of answers to instructions with the (adapted) model."""

from __future__ import annotations

from typing import Sequence

import torch

from fedit.data.prompts import build_prompt
from fedit.model import autocast


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer, prompts: Sequence[tuple[str, str]], *,
                     template: str, device: torch.device, autocast_dtype: torch.dtype | None,
                     max_new_tokens: int = 128, batch_size: int = 8) -> list[str]:
    """Answer (instruction, context) pairs greedily; left-padded batches, original order kept."""
    texts = [build_prompt(tokenizer, ins, ctx, template) for ins, ctx in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers: list[str] = []
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with autocast(device, autocast_dtype):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers.extend(t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = side
    return answers
