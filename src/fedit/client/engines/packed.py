"""Sequence packing: a micro-batch as one row of concatenated examples, with no padding.

Every example of a micro-batch (of one client, or of several clients trained at once) is laid
end to end in a single row of ``N`` tokens; positions restart at 0 for each example, and
attention runs causally inside each example only (:func:`packed_attention`, one SDPA call per
example), so every token sees exactly what it sees in a padded batch: packing is exact up to
float rounding. The next-token targets are shifted per example, so no token predicts the first
token of the next example. Linear layers then run on ``N`` real tokens instead of
``rows x longest`` and a client's tokens form one contiguous block of rows (the per-client LoRA
of :mod:`fedit.client.engines.fused_kernel` slices it without copying).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from fedit.client.loss import _plain_head
from fedit.data.prompts import IGNORE_INDEX, TokenizedExample

ATTENTION_NAME = "fedit_packed"
_local = threading.local()  # the example boundaries of the pass in progress (see activate)


@dataclass
class PackedBatch:
    """Examples of one or more clients in one row; ``blocks`` are (slot, start, end) token ranges."""

    input_ids: torch.Tensor      # [1, N]
    position_ids: torch.Tensor   # [1, N]: 0..len-1 for every example
    targets: torch.Tensor        # [N]: the next token within the example, IGNORE_INDEX elsewhere
    bounds: list[tuple[int, int]]            # (start, end) of every example
    blocks: list[tuple[int, int, int]]       # (slot, start, end): the contiguous rows of each slot

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[1])

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device),
                           self.bounds, self.blocks)


def pack(groups: Sequence[tuple[int, Sequence[TokenizedExample]]]) -> PackedBatch:
    """Pack ``[(slot, examples), ...]`` into one row, slot by slot, examples in the given order."""
    ids: list[int] = []
    pos: list[int] = []
    targets: list[int] = []
    bounds: list[tuple[int, int]] = []
    blocks: list[tuple[int, int, int]] = []
    for slot, examples in groups:
        first = len(ids)
        for ex in examples:
            n = len(ex.input_ids)
            bounds.append((len(ids), len(ids) + n))
            ids.extend(ex.input_ids)
            pos.extend(range(n))
            targets.extend(ex.labels[1:])
            targets.append(IGNORE_INDEX)
        if len(ids) > first:
            blocks.append((slot, first, len(ids)))
    return PackedBatch(torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long),
                       torch.tensor(targets, dtype=torch.long), bounds, blocks)


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """Causal attention inside each packed example (a transformers attention function).

    ``query`` is [1, heads, N, dim], ``key``/``value`` [1, kv_heads, N, dim]; returns [1, N, heads, dim].
    """
    bounds = getattr(_local, "bounds", None)
    if bounds is None:
        raise RuntimeError("packed attention used outside fedit.client.engines.packed.activate()")
    gqa = query.shape[1] != key.shape[1]
    sizes = [end - start for start, end in bounds]
    # split (not slices): its backward is one cat, where each slice would add a zero-filled copy
    parts = zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))
    outs = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling,
                                           enable_gqa=gqa) for q, k, v in parts]
    if len(outs) == 1:
        return outs[0].transpose(1, 2).contiguous(), None
    return torch.cat([o.transpose(1, 2) for o in outs], dim=1), None  # cat writes [1, N, heads, dim] at once


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, packed_attention)


_register()


class activate:
    """Context manager: ``model`` attends with :func:`packed_attention` over ``batch``'s examples."""

    def __init__(self, model: torch.nn.Module, batch: PackedBatch) -> None:
        self.config, self.bounds = model.config, batch.bounds

    def __enter__(self) -> None:
        self.previous = self.config._attn_implementation_internal
        self.config._attn_implementation_internal = ATTENTION_NAME
        _local.bounds = self.bounds

    def __exit__(self, *exc) -> None:
        self.config._attn_implementation_internal = self.previous
        _local.bounds = None


def packed_token_losses(model: torch.nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Per-token fp32 cross-entropy at the labelled positions of a packed batch (in row order)."""
    plain = _plain_head(model)
    if plain is None:
        raise RuntimeError("packed training needs a model whose logits are lm_head(hidden)")
    decoder, head = plain
    keep = batch.targets != IGNORE_INDEX
    with activate(decoder, batch):
        hidden = decoder(input_ids=batch.input_ids, position_ids=batch.position_ids).last_hidden_state[0]
    logits = head(hidden[keep])
    return F.cross_entropy(logits.float(), batch.targets[keep], reduction="none")
