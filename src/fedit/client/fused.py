"""Fused LoRA for local training: fewer, larger matmuls; cheap dropout; several adapters at once.

PEFT computes every adapted projection on its own: ``base(x) + B(A(dropout(x))) * scale``, i.e.
per decoder layer seven base matmuls, seven dropout masks and fourteen rank-r matmuls. Here,
while :meth:`FusedLora.losses` runs, projections that read the same input (q/k/v, gate/up)
are computed as one group:

    out = x @ [W_q; W_k; W_v]^T + (keep(x) @ [A_q; A_k; A_v]^T) @ blockdiag(s B_q, s B_k, s B_v)^T

one base matmul over the concatenated frozen weights (the modules' own weights become views of
it, so no memory is added), one dropout mask per input instead of one per projection, one A
and one B matmul added to the base output in the same pass (addmm). Each projection still sees
every input element dropped independently with probability p, as with PEFT; projections that
share an input share the mask. The masks come from :mod:`fedit.client.dropout`: per example,
independent of batching, so a client trained alone and the same client trained in one pass with
others (:mod:`fedit.client.multilora`) draw the same masks.

Rows belong to adapter *slots* (one per client trained in the pass): the base matmul runs once
over all rows, and each slot's contiguous block of rows goes through that slot's own A and B.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Mapping, Sequence

import peft
import torch
import torch.nn.functional as F

from fedit.client.dropout import DropoutStreams, DroppedLinear
from fedit.client.packed import PackedBatch, packed_token_losses, pack
from fedit.data.prompts import TokenizedExample
from fedit.model import adapter_parameters, autocast

SUPPORTED_MODELS = ("llama",)  # packed attention and the shared-input groups are checked on these
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
Weights = Mapping[str, torch.Tensor]   # wire key -> LoRA tensor (A: [r, in], B: [out, r])


def why_unsupported(model: torch.nn.Module) -> str | None:
    """Why the fused path cannot train ``model`` exactly, or None when it can."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    kind = getattr(getattr(causal, "config", None), "model_type", None)
    if kind not in SUPPORTED_MODELS:
        return f"model type {kind!r} (fused LoRA supports {', '.join(SUPPORTED_MODELS)})"
    name = "is_activation_checkpointing" if hasattr(type(causal), "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    if getattr(causal, name, False):
        return "gradient checkpointing is on"
    try:
        _sites(model)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class Site:
    """One adapted projection: its PEFT module and the wire keys of its LoRA factors."""

    name: str
    module: torch.nn.Module
    key_a: str
    key_b: str
    scaling: float
    dropout: float


def _sites(model: torch.nn.Module) -> list[Site]:
    by_module: dict[str, dict[str, str]] = {}
    for key in adapter_parameters(model):
        name, _, rest = key.rpartition(".lora_")
        by_module.setdefault(name, {})[rest.split(".")[0]] = key
    sites = []
    for name, keys in by_module.items():
        module = model.get_submodule(name)
        if not isinstance(module, peft.tuners.lora.layer.Linear) or set(keys) != {"A", "B"}:
            raise ValueError(f"{name}: not a plain LoRA linear layer")
        adapters = module.active_adapters
        if len(adapters) != 1 or module.merged or module.disable_adapters or module.fan_in_fan_out:
            raise ValueError(f"{name}: merged, disabled, transposed or several active adapters")
        adapter = adapters[0]
        if adapter in module.lora_variant or module.lora_B[adapter].bias is not None:
            raise ValueError(f"{name}: a LoRA variant (DoRA...) or a LoRA bias")
        drop = module.lora_dropout[adapter]
        sites.append(Site(name, module, keys["A"], keys["B"], float(module.scaling[adapter]),
                          float(drop.p) if isinstance(drop, torch.nn.Dropout) else 0.0))
    if not sites:
        raise ValueError("no LoRA layers")
    return sites


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
    """The groups of one PEFT model, built once; :meth:`active` routes its LoRA layers through them."""

    def __init__(self, model: torch.nn.Module) -> None:
        reason = why_unsupported(model)
        if reason is not None:
            raise ValueError(reason)
        self.model = model
        self.keys = frozenset(adapter_parameters(model))
        sites = {s.name: s for s in _sites(model)}
        groups: list[Group] = []
        for name in list(sites):
            site = sites.get(name)
            if site is None:
                continue
            parent, _, leaf = name.rpartition(".")
            members = [site]
            for names in SHARED_INPUTS:
                if leaf == names[0]:
                    members = [sites[f"{parent}.{n}"] for n in names if f"{parent}.{n}" in sites]
            if len({(m.dropout, m.module.base_layer.in_features) for m in members}) > 1:
                members = [site]
            for m in members:
                sites.pop(m.name)
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


_ENGINES: weakref.WeakKeyDictionary[torch.nn.Module, FusedLora] = weakref.WeakKeyDictionary()


def fused_engine(model: torch.nn.Module) -> FusedLora:
    """The model's FusedLora, built on first use and rebuilt if its adapter or base weights changed."""
    engine = _ENGINES.get(model)
    if engine is None or not engine.is_current(model):
        engine = _ENGINES[model] = FusedLora(model)
    return engine


def slot_loss_sums(batch: PackedBatch, losses: torch.Tensor, slots: int) -> torch.Tensor:
    """Sum of the token losses of each slot ([slots], fp32)."""
    keep = batch.targets != -100
    owner = torch.empty(batch.num_tokens, dtype=torch.long)
    for slot, start, end in batch.blocks:
        owner[start:end] = slot
    owner = owner[keep].to(losses.device)
    return torch.zeros(slots, dtype=losses.dtype, device=losses.device).index_add(0, owner, losses)


def example_seed(client_seed: int, position: int) -> tuple[int, int, int]:
    """The dropout stream of the example at ``position`` of a client's local round (plan order)."""
    return (client_seed, 0x4C6F5241, position)


def micro_batch_losses(model: torch.nn.Module, groups: Sequence[tuple[int, Sequence[TokenizedExample], int]],
                       weights: Sequence[Weights], device: torch.device,
                       autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, int]:
    """Per-slot loss sums of one packed pass and its token count.

    ``groups`` is ``[(slot, examples, (client seed, position of the first example)), ...]``.
    """
    batch = pack([(slot, exs) for slot, exs, _ in groups])
    seeds = [example_seed(cseed, first + i) for _, exs, (cseed, first) in groups for i in range(len(exs))]
    losses = fused_engine(model).losses(batch, weights, seeds, device, autocast_dtype)
    return slot_loss_sums(batch, losses, len(weights)), batch.num_tokens
