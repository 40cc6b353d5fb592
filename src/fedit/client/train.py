"""The client update: global adapter + the client's records -> new adapter, n_examples, metrics.

The base model stays resident; only the LoRA parameters are overwritten with the global
adapter before training and read out after. Everything random in a client's round (data
order, LoRA dropout) derives from (seed, round, client id), so the simulation and the Flower
ClientApp produce the same update for the same client.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from fedit.client.batching import collate, loss_token_count, plan_steps
from fedit.client.job import ClientUpdate, Correction
from fedit.client.loss import token_losses
from fedit.config import TrainConfig
from fedit.data.prompts import TokenizedExample
from fedit.errors import ConfigError
from fedit.model import AdapterState, adapter_parameters, autocast, client_adapter, get_adapter_state, \
    set_adapter_state

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)
LrAtStep = Callable[[int, int], float]            # (step, total_steps) -> learning rate


@dataclass
class StepInfo:
    """The optimizer step just taken (``LocalTrainer.last_step``, read by step callbacks that log)."""

    step: int = 0
    total: int = 0
    loss: float = float("nan")
    lr: float = float("nan")
    input_tokens: int = 0       # non-padding tokens of the step's forward passes
    seconds: float = 0.0


def resolve_lora_kernel(spec: str, model: torch.nn.Module) -> str:
    """``--lora-kernel auto|fused|peft`` -> ``fused`` or ``peft`` for this model."""
    if spec == "peft":
        return "peft"
    from fedit.client.fused import why_unsupported

    reason = why_unsupported(model)
    if reason is None:
        return "fused"
    if spec == "fused":
        raise ConfigError(f"--lora-kernel fused: not supported for this model ({reason}); use auto or peft")
    logger.info("LoRA kernel: peft (fused not supported: %s)", reason)
    return "peft"


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A 63-bit seed that depends only on (seed, round, client)."""
    return int(np.random.SeedSequence([seed, round_idx, client_id]).generate_state(2, np.uint64)[0] >> 1)


class LocalTrainer:
    """Trains the LoRA parameters of one resident PEFT model for one client at a time.

    ``initial_state``: the global adapter's seeded initialisation (default: the model's adapter
    now), the value of every entry a job does not carry (A under ffa; see
    fedit.model.client_adapters).

    ``lora_kernel`` (``--lora-kernel``): ``peft`` runs PEFT's own layers on padded micro-batches;
    ``fused`` runs :func:`fedit.client.multilora.train_clients` (packed sequences, fused LoRA);
    ``auto`` picks ``fused`` where it supports the model. See docs/performance.md.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device,
                 autocast_dtype: torch.dtype | None, pad_id: int, initial_state: AdapterState | None = None,
                 lora_kernel: str = "peft") -> None:
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.pad_id = pad_id
        self.initial_state = get_adapter_state(model) if initial_state is None else initial_state
        self.last_step = StepInfo()
        self.lora_kernel = resolve_lora_kernel(lora_kernel, model)

    def fit(self, global_state: AdapterState, examples: Sequence[TokenizedExample], cfg: TrainConfig,
            *, seed: int, round_idx: int, client_id: int, corrections: Sequence[Correction] = (),
            on_step: StepCallback | None = None, lora: tuple[int | None, str] | None = None,
            lr_at_step: LrAtStep | None = None) -> ClientUpdate:
        """Run one local round and return the client's update.

        ``global_state`` is what the job carries: the client trains exactly those entries.
        ``lora``: (rank, targets) of the client's own adapter (None: the global adapter).
        ``corrections`` add a method's term to the gradients of every step before clipping
        (FedProx's proximal term, SCAFFOLD's control variates; see fedit.client.job).
        ``lr_at_step`` sets the learning rate of every step (a per-step schedule); else ``cfg.lr``.
        """
        if self.lora_kernel == "fused" and self.fused_usable(global_state, lora):
            return self._fit_fused(global_state, examples, cfg, seed=seed, round_idx=round_idx,
                                   client_id=client_id, corrections=corrections, on_step=on_step,
                                   lr_at_step=lr_at_step)
        start = time.perf_counter()
        with client_adapter(self.model, lora, global_state, self.initial_state) as named:
            return self._fit(named, examples, cfg, seed=seed, round_idx=round_idx, client_id=client_id,
                             corrections=corrections, on_step=on_step, lr_at_step=lr_at_step, start=start)

    def _fit(self, named: dict[str, torch.nn.Parameter], examples: Sequence[TokenizedExample], cfg: TrainConfig,
             *, seed: int, round_idx: int, client_id: int, corrections: Sequence[Correction],
             on_step: StepCallback | None, lr_at_step: LrAtStep | None, start: float) -> ClientUpdate:
        params = list(named.values())
        cseed = client_seed(seed, round_idx, client_id)
        plan = plan_steps([len(e.input_ids) for e in examples], batch_size=cfg.batch_size,
                          micro_batch_size=cfg.micro_batch_size, epochs=cfg.local_epochs,
                          steps=cfg.local_steps, rng=np.random.default_rng(cseed))
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        stats = {"loss_sum": 0.0, "tokens": 0, "padded_tokens": 0, "input_tokens": 0, "compute_s": 0.0}
        self.model.train()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cseed)
            for step_idx, step in enumerate(plan):
                lr = cfg.lr if lr_at_step is None else lr_at_step(step_idx, len(plan))
                for group in optimizer.param_groups:
                    group["lr"] = lr
                t0, tokens0 = time.perf_counter(), stats["input_tokens"]
                loss = self._step(step, examples, optimizer, cfg, named, corrections, stats)
                self.last_step = StepInfo(step_idx + 1, len(plan), loss, lr, stats["input_tokens"] - tokens0,
                                          time.perf_counter() - t0)
                if on_step is not None:
                    on_step(step_idx + 1, len(plan), loss)
        self.model.eval()
        optimizer.zero_grad(set_to_none=True)
        state = {k: p.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous() for k, p in named.items()}
        tokens = stats["tokens"]
        metrics = {
            "train_loss": stats["loss_sum"] / tokens if tokens else float("nan"),
            "steps": len(plan),
            "tokens": tokens,
            "padded_tokens": stats["padded_tokens"],
            "seconds": time.perf_counter() - start,
            "compute_seconds": stats["compute_s"],
            "lr": self.last_step.lr if plan else cfg.lr,   # of the last step (schedules change it)
            "trained_together": 1,
        }
        return ClientUpdate(client_id, state, len(examples), metrics)

    def fused_usable(self, global_state: AdapterState, lora: tuple[int | None, str] | None = None) -> bool:
        """The fused kernel trains the full global adapter of supported models; anything else
        (a client's own rank or targets, ffa's B-only jobs) runs on peft, said once per reason."""
        from fedit.client.fused import why_unsupported

        reason = why_unsupported(self.model)
        if reason is None and lora is not None:
            reason = "the client trains its own LoRA rank or targets"
        if reason is None and set(global_state) != set(adapter_parameters(self.model)):
            reason = "the job's adapter has other keys than the model's (e.g. ffa trains B only)"
        warned = self.__dict__.setdefault("_warned", set())
        if reason is not None and reason not in warned:
            warned.add(reason)
            logger.info("fused LoRA kernel not usable (%s): such updates run on peft", reason)
        return reason is None

    def _fit_fused(self, global_state: AdapterState, examples: Sequence[TokenizedExample], cfg: TrainConfig,
                   *, seed: int, round_idx: int, client_id: int, corrections: Sequence[Correction],
                   on_step: StepCallback | None, lr_at_step: LrAtStep | None) -> ClientUpdate:
        """The fused local update: the one-client case of multi-LoRA training (same code path)."""
        from fedit.client.multilora import ClientRun, train_clients

        run = ClientRun(client_id, round_idx, global_state, examples, cfg, corrections, on_step, lr_at_step)
        update = train_clients(self, [run], seed=seed)[0]
        set_adapter_state(self.model, update.state)  # the model holds the client's adapter, as with peft
        return update

    def _step(self, step: list[list[int]], examples: Sequence[TokenizedExample], optimizer,
              cfg: TrainConfig, named: dict[str, torch.nn.Parameter], corrections: Sequence[Correction],
              stats: dict) -> float:
        micro = [[examples[i] for i in mb] for mb in step]
        denom = max(1, sum(loss_token_count(mb) for mb in micro))
        step_loss = 0.0
        for mb in micro:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in collate(mb, self.pad_id).items()}
            t0 = time.perf_counter()
            with autocast(self.device, self.autocast_dtype):
                loss_sum = token_losses(self.model, batch)[0].sum()
            (loss_sum / denom).backward()
            step_loss += loss_sum.item()
            stats["compute_s"] += time.perf_counter() - t0
            stats["padded_tokens"] += batch["input_ids"].numel()
            stats["input_tokens"] += int(batch["attention_mask"].sum())
        t0 = time.perf_counter()
        for correct in corrections:
            correct(named)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(named.values()), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stats["compute_s"] += time.perf_counter() - t0
        stats["loss_sum"] += step_loss
        stats["tokens"] += denom
        return step_loss / denom
