"""Held-out evaluation: response-token loss and perplexity, overall and per category."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

import torch

from fedit.client.batching import collate
from fedit.client.loss import token_losses
from fedit.data.prompts import TokenizedExample
from fedit.model import autocast


def _summary(loss_sum: float, tokens: int, examples: int) -> dict[str, float]:
    loss = loss_sum / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)) if tokens else float("nan"),
            "tokens": tokens, "examples": examples}


@torch.no_grad()
def per_example_losses(model: torch.nn.Module, examples: Sequence[TokenizedExample], *,
                       device: torch.device, autocast_dtype: torch.dtype | None, pad_id: int,
                       batch_size: int = 8) -> list[tuple[float, int]]:
    """(sum of response-token losses, number of response tokens) for every example, in order."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(examples)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in idx], pad_id).items()}
        with autocast(device, autocast_dtype):
            losses, rows = token_losses(model, batch)
        sums = torch.zeros(len(idx), dtype=torch.float64, device=losses.device).index_add_(0, rows, losses.double())
        counts = torch.bincount(rows, minlength=len(idx))
        for row, i in enumerate(idx):
            out[i] = (sums[row].item(), int(counts[row].item()))
    model.train(was_training)
    return out


def summarize_losses(examples: Sequence[TokenizedExample], losses: Sequence[tuple[float, int]]) -> dict[str, Any]:
    """Token-weighted response loss and perplexity of per-example ``(loss sum, tokens)``:
    ``overall`` and ``per_category``."""
    by_cat: dict[str, list[float]] = defaultdict(lambda: [0.0, 0, 0])
    for ex, (loss_sum, tokens) in zip(examples, losses):
        acc = by_cat[ex.category]
        acc[0] += loss_sum
        acc[1] += tokens
        acc[2] += 1
    total = [sum(v[i] for v in by_cat.values()) for i in range(3)]
    return {"overall": _summary(*total),
            "per_category": {c: _summary(*by_cat[c]) for c in sorted(by_cat)}}


def evaluate_loss(model: torch.nn.Module, examples: Sequence[TokenizedExample], *,
                  device: torch.device, autocast_dtype: torch.dtype | None, pad_id: int,
                  batch_size: int = 8) -> dict[str, Any]:
    """Token-weighted response loss and perplexity: ``overall`` and ``per_category``."""
    losses = per_example_losses(model, examples, device=device, autocast_dtype=autocast_dtype,
                                pad_id=pad_id, batch_size=batch_size)
    return summarize_losses(examples, losses)
