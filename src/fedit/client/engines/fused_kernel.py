"""The fused LoRA kernel: fewer, larger matmuls; cheap dropout; several adapters at once.

PEFT computes every adapted projection on its own: ``base(x) + B(A(dropout(x))) * scale``, i.e.
per decoder layer seven base matmuls, seven dropout masks and fourteen rank-r matmuls. Here,
while :meth:`FusedLora.losses` runs, projections that read the same input (q/k/v, gate/up)
are computed as one group:

    out = x @ [W_q; W_k; W_v]^T + (keep(x) @ [A_q; A_k; A_v]^T) @ blockdiag(s B_q, s B_k, s B_v)^T

one base matmul over the concatenated frozen weights (the modules' own weights become views of
it, so no memory is added), one dropout mask per input instead of one per projection, one A
and one B matmul added to the base output in the same pass (addmm). Each projection still sees
every input element dropped independently with probability p, as with PEFT; projections that
share an input share the mask. The masks come from :mod:`fedit.client.engines.dropout`: per example,
independent of batching, so a client trained alone and the same client trained in one pass with
others (fedit.client.trainer) draw the same masks.

Rows belong to adapter *slots* (one per client trained in the pass): the base matmul runs once
over all rows, and each slot's contiguous block of rows goes through that slot's own A and B.
Which models and layers it may run on is decided in :mod:`fedit.client.engines.fused`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from fedit.client.engines.dropout import DropoutStreams, DroppedLinear
from fedit.client.engines.packed import PackedBatch, packed_token_losses
from fedit.model import adapter_parameters, autocast

Weights = Mapping[str, torch.Tensor]   # wire key -> LoRA tensor (A: [r, in], B: [out, r])


@dataclass
class Site:
    """One adapted projection: its PEFT module and the wire keys of its LoRA factors."""

    name: str
    module: torch.nn.Module
    key_a: str
    key_b: str
    scaling: float
    dropout: float


class _Pass:
    """What the groups read during one forward: the slots' weights, row blocks and dropout masks."""

    def __init__(self, batch: PackedBatch, weights: Sequence[Weights], streams: DropoutStreams | None,
                 device: torch.device) -> None:
        self.blocks, self.weights, self.streams, self.device = batch.blocks, weights, streams, device


class Group:
    """Projections reading the same input, computed together (a single site is a group of one)."""

    def __init__(self, sites: list[Site]) -> None:
        self.sites = sites
        self.splits = [s.module.base_layer.out_features for s in sites]
        self.dropout = sites[0].dropout
        self._pass: _Pass | None = None
        self._cache: tuple[torch.Tensor, list[torch.Tensor], int] | None = None
        self._fuse_base()

    def _fuse_base(self) -> None:
        layers = [s.module.base_layer for s in self.sites]
        if len(layers) == 1:
            self.weight, self.bias = layers[0].weight, layers[0].bias
        else:  # one matmul over the concatenated frozen weights; the layers keep views of it
            with torch.no_grad():
                self.weight = torch.cat([lay.weight.detach() for lay in layers])
                for lay, part in zip(layers, self.weight.split(self.splits)):
                    lay.weight.data = part
                biases = [lay.bias for lay in layers]
                self.bias = None if all(b is None for b in biases) else torch.cat(
                    [b.detach() if b is not None else torch.zeros(n, dtype=self.weight.dtype, device=self.weight.device)
                     for b, n in zip(biases, self.splits)])
        self.pointers = [lay.weight.data_ptr() for lay in layers]

    def is_current(self) -> bool:
        """False when someone replaced a base weight (moved or cast the model): rebuild."""
        return [s.module.base_layer.weight.data_ptr() for s in self.sites] == self.pointers

    def call(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache[0] is not x:
            self._cache = (x, self._forward(x), 0)
        source, outs, used = self._cache
        self._cache = None if used + 1 == len(self.sites) else (source, outs, used + 1)
        return outs[index]

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        ctx = self._pass
        shape = x.shape[:-1]
        x2 = x.reshape(-1, x.shape[-1])
        out = F.linear(x2, self.weight, self.bias)
        drop = None
        if self.dropout > 0 and self.sites[0].module.training and ctx.streams is not None:
            drop = ctx.streams.drop(x2.shape[1], self.dropout).to(ctx.device, non_blocking=True)
        scale = 1.0 / (1.0 - self.dropout) if drop is not None else 1.0  # folded into B
        blocks = ctx.blocks
        sizes = [end - start for _, start, end in blocks]
        # split (not slice): its backward is one cat, where K slices would each add a zero-filled copy
        rows_of = x2.split(sizes) if len(blocks) > 1 else (x2,)
        base_of = out.split(sizes) if len(blocks) > 1 else (out,)
        drop_of = drop.split(sizes) if drop is not None and len(blocks) > 1 else (drop,)
        parts = []
        for (slot, _, _), rows, base, mask in zip(blocks, rows_of, base_of, drop_of):
            w = ctx.weights[slot]
            a = torch.cat([w[s.key_a] for s in self.sites]) if len(self.sites) > 1 else w[self.sites[0].key_a]
            bs = [w[s.key_b] * (s.scaling * scale) for s in self.sites]
            b = torch.block_diag(*bs) if len(bs) > 1 else bs[0]
            h = F.linear(rows, a) if mask is None else DroppedLinear.apply(rows, mask, a)
            parts.append(torch.addmm(base, h.to(base.dtype), b.t().to(base.dtype)))  # base + LoRA, one pass
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if len(self.sites) == 1:
            return [out.view(*shape, -1)]
        return [part.view(*shape, -1) for part in out.split(self.splits, dim=-1)]


class FusedLora:
    """The groups of one PEFT model's adapted projections (``sites``, of a model the fused engine
    supports; ``shared_inputs``: names of the projections that read the same input, first name
    first), built once; :meth:`losses` routes its LoRA layers through them."""

    def __init__(self, model: torch.nn.Module, sites: Sequence[Site],
                 shared_inputs: Sequence[Sequence[str]]) -> None:
        self.model = model
        self.keys = frozenset(adapter_parameters(model))
        pending = {s.name: s for s in sites}
        groups: list[Group] = []
        for name in list(pending):
            site = pending.get(name)
            if site is None:
                continue
            parent, _, leaf = name.rpartition(".")
            members = [site]
            for names in shared_inputs:
                if leaf == names[0]:
                    members = [pending[f"{parent}.{n}"] for n in names if f"{parent}.{n}" in pending]
            if len({(m.dropout, m.module.base_layer.in_features) for m in members}) > 1:
                members = [site]
            for m in members:
                pending.pop(m.name)
            groups.append(Group(members))
        self.groups = groups

    def is_current(self, model: torch.nn.Module) -> bool:
        return frozenset(adapter_parameters(model)) == self.keys and all(g.is_current() for g in self.groups)

    def losses(self, batch: PackedBatch, weights: Sequence[Weights], seeds: Sequence[Sequence[int]] | None,
               device: torch.device, autocast_dtype: torch.dtype | None) -> torch.Tensor:
        """Per-token losses of a packed batch, each slot's rows through ``weights[slot]``."""
        streams = DropoutStreams(seeds, batch.bounds) if seeds is not None else None
        ctx = _Pass(batch, weights, streams, device)
        patched = []
        try:
            for group in self.groups:
                group._pass, group._cache = ctx, None
                for index, site in enumerate(group.sites):
                    site.module.forward = functools.partial(group.call, index)
                    patched.append(site.module)
            with autocast(device, autocast_dtype):
                return packed_token_losses(self.model, batch.to(device))
        finally:
            for module in patched:
                del module.forward
            for group in self.groups:
                group._pass, group._cache = None, None


