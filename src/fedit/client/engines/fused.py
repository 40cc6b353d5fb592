"""The fused engine: packed sequences through the fused LoRA kernel, several clients per pass.

Each pass packs the next micro-batch of every run in it into one row (:mod:`.packed`): the base
matmuls run once over all runs' tokens and each run's block of tokens goes through its own copy of
the adapter (:mod:`.fused_kernel`). The loss of a pass is the sum over runs of ``run's loss sum /
run's step denominator``, so one backward gives every run exactly its own gradient. Dropout masks
come per example from (client seed, position in the run's plan) (:mod:`.dropout`), so a client's
update does not depend on which others share its passes, up to float rounding (different matmul
shapes sum in different orders).

Everything that knows a model family lives here, in the kernel and in packed.py: the families the
kernel is checked on, which projections share an input, what a plain peft LoRA layer looks like.
A model it does not support trains on the peft engine (``--lora-kernel auto``, said in the log).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator, Sequence

import peft
import torch

from fedit.client.engines.base import Computed, Engine, Params, Slice
from fedit.client.engines.fused_kernel import FusedLora, Site, Weights
from fedit.client.engines.packed import PackedBatch, pack
from fedit.client.runs import ClientRun
from fedit.data.prompts import TokenizedExample
from fedit.model import adapter_parameters, check_adapter_state

SUPPORTED_MODELS = ("llama",)  # packed attention and the shared-input groups are checked on these
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


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
        base = module.base_layer
        if type(base) is not torch.nn.Linear or not base.weight.is_floating_point():
            raise ValueError(f"{name}: the base layer is a {type(base).__name__} (quantized or not a plain "
                             "torch Linear): the fused kernel reads its weight directly")
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


def bytes_per_token(model: torch.nn.Module, dtype_bytes: int) -> int:
    """What one token of a training pass keeps for backward, roughly: measured on SmolLM2 with the
    fused kernel as ~9 x (hidden + intermediate) activations per layer, plus fp32 logits."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    hidden, inter = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    return 10 * config.num_hidden_layers * (hidden + inter) * dtype_bytes + 3 * 4 * config.vocab_size


_ENGINES: weakref.WeakKeyDictionary[torch.nn.Module, FusedLora] = weakref.WeakKeyDictionary()


def fused_engine(model: torch.nn.Module) -> FusedLora:
    """The model's FusedLora, built on first use and rebuilt if its adapter or base weights changed."""
    engine = _ENGINES.get(model)
    if engine is None or not engine.is_current(model):
        reason = why_unsupported(model)
        if reason is not None:
            raise ValueError(reason)
        engine = _ENGINES[model] = FusedLora(model, _sites(model), SHARED_INPUTS)
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


class FusedEngine(Engine):
    """Runs train their own copies of the model's adapter, any number of them in one pass."""

    name = "fused"
    together = True

    def __init__(self, model: torch.nn.Module, device: torch.device, autocast_dtype: torch.dtype | None) -> None:
        self.model, self.device, self.autocast_dtype = model, device, autocast_dtype
        self.params: list[Params] = []
        self.seeds: list[int] = []

    def why_not(self, run: ClientRun) -> str | None:
        """The fused kernel trains the full global adapter of supported models."""
        reason = why_unsupported(self.model)
        if reason is None and run.local is not None:
            reason = "a local adapter is trained beside the global one (dual)"
        if reason is None and run.lora is not None:
            reason = "the client trains its own LoRA rank or targets"
        if reason is None and set(run.state) != set(adapter_parameters(self.model)):
            reason = "the job's adapter has other keys than the model's (e.g. ffa trains B only)"
        return reason

    @contextmanager
    def open(self, runs: Sequence[ClientRun], seeds: Sequence[int]) -> Iterator[list[Params]]:
        model_params = adapter_parameters(self.model)
        self.params = []
        for run in runs:
            check_adapter_state(model_params, run.state)
            self.params.append({k: torch.nn.Parameter(run.state[k].to(device=p.device, dtype=p.dtype, copy=True),
                                                      requires_grad=p.requires_grad)
                                for k, p in model_params.items()})
        self.seeds = list(seeds)
        was_training = self.model.training
        self.model.train()
        try:
            yield self.params
        finally:
            self.model.train(was_training)
            self.params, self.seeds = [], []

    def backward(self, slices: Sequence[Slice]) -> list[Computed]:
        groups = [(slot, s.examples, (self.seeds[s.run], s.position)) for slot, s in enumerate(slices)]
        sums, _ = micro_batch_losses(self.model, groups, [self.params[s.run] for s in slices], self.device,
                                     self.autocast_dtype)
        scales = [1.0 / s.denominator for s in slices]
        (sums * torch.tensor(scales, dtype=sums.dtype, device=sums.device)).sum().backward()
        sizes = [sum(len(e.input_ids) for e in s.examples) for s in slices]
        return [Computed(value, size, size) for value, size in zip(sums.tolist(), sizes)]
