"""The local optimizer-step loop, written once for 1..N runs and both engines.

Each run keeps what it has when trained alone: its step plan (numpy RNG from the client seed),
its own AdamW, its per-step learning rate, its corrections and its gradient clipping. A pass takes
the next micro-batch of every run still training and hands them to the engine
(fedit.client.engines), which computes the forward and backward; after the pass, every run whose
optimizer step is complete applies its corrections, clips its gradient norm, sets its learning
rate and steps its AdamW. The engines differ only in how a pass is computed: the peft engine takes
one run at a time, the fused engine any number in shared passes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fedit.client.batching import loss_token_count, plan_steps
from fedit.client.engines.base import Engine, Params, Slice
from fedit.client.job import ClientUpdate
from fedit.client.runs import ClientRun, StepInfo, client_seed

StepRecorder = Callable[[StepInfo], None]   # told of every optimizer step before the run's on_step


@dataclass
class _Progress:
    """One run while it trains."""

    index: int                                  # the run's index in the engine's session
    run: ClientRun
    params: Params
    optimizer: torch.optim.Optimizer
    plan: list
    queue: list                                 # (step index, micro-batch index) still to run, last first
    position: int = 0                           # examples already seen (keys the fused dropout streams)
    step_loss: float = 0.0
    step_tokens: int = 0                        # input tokens of the step so far
    step_start: float | None = None
    lr: float = float("nan")                    # of the last step taken
    stats: dict = field(default_factory=lambda: {"loss_sum": 0.0, "tokens": 0, "padded_tokens": 0,
                                                 "compute_s": 0.0})


def train_runs(engine: Engine, runs: Sequence[ClientRun], *, seed: int,
               record: StepRecorder | None = None) -> list[ClientUpdate]:
    """Train ``runs`` on ``engine``, in shared passes (several runs need an engine that takes them
    together); one update per run, in order."""
    if len(runs) > 1 and not engine.together:
        raise ValueError(f"the {engine.name} engine trains one run at a time, not {len(runs)}")
    start = time.perf_counter()
    seeds = [client_seed(seed, run.round_idx, run.client_id) for run in runs]
    with engine.open(runs, seeds) as params:
        progress = [_start(i, run, p, s) for i, (run, p, s) in enumerate(zip(runs, params, seeds))]
        while True:
            active = [p for p in progress if p.queue]
            if not active:
                break
            _pass(engine, active, record)
        for p in progress:
            p.optimizer.zero_grad(set_to_none=True)
        total = time.perf_counter() - start
        compute = sum(p.stats["compute_s"] for p in progress) or 1.0
        return [_update(p, total * p.stats["compute_s"] / compute, len(runs)) for p in progress]


def _start(index: int, run: ClientRun, params: Params, cseed: int) -> _Progress:
    cfg = run.cfg
    plan = plan_steps([len(e.input_ids) for e in run.examples], batch_size=cfg.batch_size,
                      micro_batch_size=cfg.micro_batch_size, epochs=cfg.local_epochs, steps=cfg.local_steps,
                      rng=np.random.default_rng(cseed))
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    queue = [(s, m) for s, step in enumerate(plan) for m in range(len(step))]
    return _Progress(index, run, params, optimizer, plan, queue[::-1])


def _denominator(p: _Progress, step_idx: int) -> int:
    return max(1, sum(loss_token_count([p.run.examples[i] for i in mb]) for mb in p.plan[step_idx]))


def _pass(engine: Engine, active: list[_Progress], record: StepRecorder | None) -> None:
    """One forward/backward over the next micro-batch of every active run, then the steps it completes."""
    t0 = time.perf_counter()
    slices, done = [], []
    for p in active:
        step_idx, micro_idx = p.queue.pop()
        if p.step_start is None:
            p.step_start = t0
        mb = [p.run.examples[i] for i in p.plan[step_idx][micro_idx]]
        slices.append(Slice(p.index, mb, _denominator(p, step_idx), p.position))
        p.position += len(mb)
        done.append(step_idx if micro_idx == len(p.plan[step_idx]) - 1 else None)
    computed = engine.backward(slices)
    elapsed = time.perf_counter() - t0
    padded = max(1, sum(c.padded for c in computed))
    for p, c, step_idx in zip(active, computed, done):
        p.step_loss += c.loss_sum
        p.step_tokens += c.tokens
        p.stats["padded_tokens"] += c.padded
        t1 = time.perf_counter()
        if step_idx is not None:
            _finish_step(p, step_idx, record)
        p.stats["compute_s"] += elapsed * c.padded / padded + time.perf_counter() - t1


def _finish_step(p: _Progress, step_idx: int, record: StepRecorder | None) -> None:
    """Corrections, clipping, this step's learning rate and the AdamW step of one run."""
    cfg, named = p.run.cfg, p.params
    for correct in p.run.corrections:
        correct(named)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([t for t in named.values() if t.requires_grad], cfg.grad_clip)
    lr = cfg.lr if p.run.lr_at_step is None else p.run.lr_at_step(step_idx, len(p.plan))
    for group in p.optimizer.param_groups:
        group["lr"] = lr
    p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)
    denom = _denominator(p, step_idx)
    p.stats["loss_sum"] += p.step_loss
    p.stats["tokens"] += denom
    p.lr = lr
    if record is not None:
        record(StepInfo(step_idx + 1, len(p.plan), p.step_loss / denom, lr, p.step_tokens,
                        time.perf_counter() - (p.step_start or time.perf_counter())))
    if p.run.on_step is not None:
        p.run.on_step(step_idx + 1, len(p.plan), p.step_loss / denom)
    p.step_loss, p.step_tokens, p.step_start = 0.0, 0, None


def _update(p: _Progress, seconds: float, together: int) -> ClientUpdate:
    stats = p.stats
    state = {k: t.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
             for k, t in p.params.items()}
    metrics = {
        "train_loss": stats["loss_sum"] / stats["tokens"] if stats["tokens"] else float("nan"),
        "steps": len(p.plan),
        "tokens": stats["tokens"],
        "padded_tokens": stats["padded_tokens"],
        "seconds": max(seconds, stats["compute_s"]),
        "compute_seconds": stats["compute_s"],
        "lr": p.lr if p.plan else p.run.cfg.lr,   # of the last step (schedules change it)
        "trained_together": together,
    }
    return ClientUpdate(p.run.client_id, state, len(p.run.examples), metrics)
