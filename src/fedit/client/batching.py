"""Length-grouped dynamic batching: no example is padded beyond the longest in its micro-batch.

A client's examples are shuffled with the client's own RNG, grouped into mega-batches of
``GROUP`` optimizer batches, sorted by length inside each mega-batch and cut into batches (as
transformers' ``group_by_length`` does); each batch is split into micro-batches of similar
length for gradient accumulation.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from fedit.data.prompts import IGNORE_INDEX, TokenizedExample

GROUP = 8  # optimizer batches per length-sorting mega-batch

Step = list[list[int]]  # one optimizer step = micro-batches of example indices


def num_steps(n_examples: int, batch_size: int, epochs: float, steps: int | None) -> int:
    """Optimizer steps of one local round: --local-steps, else ceil(epochs * n / batch)."""
    if steps is not None:
        return steps
    return max(1, math.ceil(epochs * n_examples / batch_size))


def _epoch_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    order = rng.permutation(len(lengths))
    batches: list[list[int]] = []
    mega = batch_size * GROUP
    for start in range(0, len(order), mega):
        chunk = sorted(order[start:start + mega].tolist(), key=lambda i: -lengths[i])
        group = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        batches.extend(group[j] for j in rng.permutation(len(group)))
    return batches


def plan_steps(lengths: Sequence[int], *, batch_size: int, micro_batch_size: int, epochs: float,
               steps: int | None, rng: np.random.Generator) -> list[Step]:
    """The whole local round as a list of optimizer steps, each a list of micro-batches."""
    if not lengths:
        return []
    total = num_steps(len(lengths), batch_size, epochs, steps)
    plan: list[Step] = []
    while len(plan) < total:
        for batch in _epoch_batches(lengths, batch_size, rng):
            batch = sorted(batch, key=lambda i: -lengths[i])
            plan.append([batch[i:i + micro_batch_size] for i in range(0, len(batch), micro_batch_size)])
            if len(plan) == total:
                break
    return plan


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch to its own longest example."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_token_count(examples: Sequence[TokenizedExample]) -> int:
    return sum(e.num_loss_tokens for e in examples)
