"""Several clients of a round trained at once on the one frozen base (multi-LoRA).

Every pass packs the next micro-batch of each client into one row (:mod:`fedit.client.packed`):
the base matmuls run once over all clients' tokens and each client's block of tokens goes through
its own LoRA factors (:mod:`fedit.client.fused`). The loss of a pass is the sum over clients of
``client's loss tokens / client's step denominator``, so one backward gives every client exactly
its own gradient. After the pass, each client whose optimizer step is complete applies its
corrections, clips its own gradient norm and steps its own AdamW.

Each client keeps what it has when trained alone: its own copy of the adapter, its own optimizer
state, its data order (numpy RNG from (seed, round, client), as :mod:`fedit.client.train`) and its
dropout streams (one per example, keyed by the client seed and the example's position in its
plan). So a client's update is the update it gets when trained alone with the fused kernel, up
to float rounding (different matmul shapes sum in different orders); tests check it to 1e-5.
With one client this is the fused local update of ``LocalTrainer.fit``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from fedit.client.batching import loss_token_count, plan_steps
from fedit.client.fused import micro_batch_losses, why_unsupported
from fedit.client.job import (ClientJob, ClientState, ClientUpdate, Correction, check_client_config, job_corrections,
                              job_lora, job_train_config, step_schedule, transform_update)
from fedit.config import TrainConfig
from fedit.data.prompts import TokenizedExample
from fedit.model import adapter_parameters, check_adapter_state

logger = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)


@dataclass
class ClientRun:
    """One client's local round, as ``LocalTrainer.fit`` takes it."""

    client_id: int
    round_idx: int
    state: dict[str, torch.Tensor]          # the global adapter it starts from
    examples: Sequence[TokenizedExample]
    cfg: TrainConfig
    corrections: Sequence[Correction] = ()
    on_step: StepCallback | None = None
    lr_at_step: Callable[[int, int], float] | None = None   # (step, steps) -> lr; None: cfg.lr


@dataclass
class _Client:
    run: ClientRun
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    plan: list
    cseed: int
    queue: list = field(default_factory=list)   # (step index, micro-batch index) still to run
    position: int = 0                           # examples already seen (keys the dropout streams)
    step_loss: float = 0.0
    step_tokens: int = 0                        # input tokens of the step so far
    step_start: float | None = None
    lr: float = float("nan")                    # of the last step taken
    stats: dict = field(default_factory=lambda: {"loss_sum": 0.0, "tokens": 0, "padded_tokens": 0,
                                                 "compute_s": 0.0})


def _start(trainer, run: ClientRun, seed: int) -> _Client:
    from fedit.client.train import client_seed

    model_params = adapter_parameters(trainer.model)
    check_adapter_state(model_params, run.state)
    params = {k: torch.nn.Parameter(run.state[k].to(device=p.device, dtype=p.dtype, copy=True),
                                    requires_grad=p.requires_grad) for k, p in model_params.items()}
    cseed = client_seed(seed, run.round_idx, run.client_id)
    cfg = run.cfg
    plan = plan_steps([len(e.input_ids) for e in run.examples], batch_size=cfg.batch_size,
                      micro_batch_size=cfg.micro_batch_size, epochs=cfg.local_epochs, steps=cfg.local_steps,
                      rng=np.random.default_rng(cseed))
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    queue = [(s, m) for s, step in enumerate(plan) for m in range(len(step))]
    return _Client(run, params, optimizer, plan, cseed, queue[::-1])


def _finish_step(trainer, client: _Client, step_idx: int) -> None:
    from fedit.client.train import StepInfo

    cfg, named = client.run.cfg, client.params
    for correct in client.run.corrections:
        correct(named)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in named.values() if p.requires_grad], cfg.grad_clip)
    lr = cfg.lr if client.run.lr_at_step is None else client.run.lr_at_step(step_idx, len(client.plan))
    for group in client.optimizer.param_groups:
        group["lr"] = lr
    client.optimizer.step()
    client.optimizer.zero_grad(set_to_none=True)
    denom = _denominator(client, step_idx)
    client.stats["loss_sum"] += client.step_loss
    client.stats["tokens"] += denom
    client.lr = lr
    trainer.last_step = StepInfo(step_idx + 1, len(client.plan), client.step_loss / denom, lr, client.step_tokens,
                                 time.perf_counter() - (client.step_start or time.perf_counter()))
    if client.run.on_step is not None:
        client.run.on_step(step_idx + 1, len(client.plan), client.step_loss / denom)
    client.step_loss, client.step_tokens, client.step_start = 0.0, 0, None


def _denominator(client: _Client, step_idx: int) -> int:
    step = client.plan[step_idx]
    return max(1, sum(loss_token_count([client.run.examples[i] for i in mb]) for mb in step))


def _pass(trainer, clients: list[_Client]) -> None:
    """One forward/backward over the next micro-batch of every client in ``clients``."""
    t0 = time.perf_counter()
    groups, scales, done = [], [], []
    for slot, client in enumerate(clients):
        step_idx, micro_idx = client.queue.pop()
        if client.step_start is None:
            client.step_start = t0
        mb = [client.run.examples[i] for i in client.plan[step_idx][micro_idx]]
        groups.append((slot, mb, (client.cseed, client.position)))
        client.position += len(mb)
        scales.append(1.0 / _denominator(client, step_idx))
        done.append(step_idx if micro_idx == len(client.plan[step_idx]) - 1 else None)
    sums, tokens = micro_batch_losses(trainer.model, groups, [c.params for c in clients], trainer.device,
                                      trainer.autocast_dtype)
    (sums * torch.tensor(scales, dtype=sums.dtype, device=sums.device)).sum().backward()
    values = sums.tolist()
    elapsed = time.perf_counter() - t0
    sizes = [sum(len(e.input_ids) for e in g[1]) for g in groups]
    for client, value, size, step_idx in zip(clients, values, sizes, done):
        client.step_loss += value
        client.step_tokens += size
        client.stats["padded_tokens"] += size
        t1 = time.perf_counter()
        if step_idx is not None:
            _finish_step(trainer, client, step_idx)
        client.stats["compute_s"] += elapsed * size / max(1, tokens) + time.perf_counter() - t1


def train_clients(trainer, runs: Sequence[ClientRun], *, seed: int) -> list[ClientUpdate]:
    """Train ``runs`` together on ``trainer``'s resident model; one update per run, in order."""
    start = time.perf_counter()
    clients = [_start(trainer, run, seed) for run in runs]
    model = trainer.model
    was_training = model.training
    model.train()
    try:
        while True:
            active = [c for c in clients if c.queue]
            if not active:
                break
            _pass(trainer, active)
    finally:
        model.train(was_training)
    total = time.perf_counter() - start
    compute = sum(c.stats["compute_s"] for c in clients) or 1.0
    return [_update(c, total * c.stats["compute_s"] / compute, len(clients)) for c in clients]


def _update(client: _Client, seconds: float, together: int) -> ClientUpdate:
    stats = client.stats
    state = {k: p.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()
             for k, p in client.params.items()}
    metrics = {
        "train_loss": stats["loss_sum"] / stats["tokens"] if stats["tokens"] else float("nan"),
        "steps": len(client.plan),
        "tokens": stats["tokens"],
        "padded_tokens": stats["padded_tokens"],
        "seconds": max(seconds, stats["compute_s"]),
        "compute_seconds": stats["compute_s"],
        "lr": client.lr if client.plan else client.run.cfg.lr,   # of the last step (schedules change it)
        "trained_together": together,
    }
    return ClientUpdate(client.run.client_id, state, len(client.run.examples), metrics)


def device_memory(device: torch.device) -> int:
    """Total bytes of ``device`` (GPU memory, or the machine's RAM). Total, not free: the number of
    clients trained at once must not change between a run and its resume (results would differ
    by float rounding, and ``--resume`` is bit-identical)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def bytes_per_token(model: torch.nn.Module, dtype_bytes: int) -> int:
    """What one token of a training pass keeps for backward, roughly: measured on SmolLM2 with the
    fused kernel as ~9 x (hidden + intermediate) activations per layer, plus fp32 logits."""
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    hidden, inter = config.hidden_size, getattr(config, "intermediate_size", 4 * config.hidden_size)
    return 10 * config.num_hidden_layers * (hidden + inter) * dtype_bytes + 3 * 4 * config.vocab_size


def concurrency(trainer, cfg, datas: Sequence[Sequence[TokenizedExample]]) -> int:
    """How many of these clients to train at once: ``--concurrent-clients``, or by default as many
    as fit (one micro-batch of each client's longest example) in a quarter of the device's memory
    beside the model."""
    if cfg.federation.concurrent_clients is not None:
        return cfg.federation.concurrent_clients
    if getattr(trainer, "lora_kernel", "peft") != "fused" or len(datas) < 2:
        return 1
    dtype_bytes = 2 if trainer.autocast_dtype is not None else 4
    per_token = bytes_per_token(trainer.model, dtype_bytes)
    weights = sum(p.numel() * p.element_size() for p in trainer.model.parameters())
    budget = device_memory(trainer.device) // 4 - weights
    width, used = 0, 0
    for data in datas:
        need = cfg.train.micro_batch_size * max((len(e.input_ids) for e in data), default=0) * per_token
        if width and used + need > budget:
            break
        width, used = width + 1, used + need
    return max(1, width)


def can_train_together(trainer, jobs: Sequence[ClientJob]) -> bool:
    """True when these jobs can share passes: the fused kernel is on and usable for the resident
    model, and every job trains the global adapter (no client rank or targets of its own) with all
    its keys and shapes."""
    if getattr(trainer, "lora_kernel", "peft") != "fused" or why_unsupported(trainer.model) is not None:
        return False
    if any(job_lora(job.config) is not None for job in jobs):
        return False
    params = adapter_parameters(trainer.model)
    return all(set(job.state) == set(params) and all(job.state[k].shape == p.shape for k, p in params.items())
               for job in jobs)


def run_jobs(trainer, jobs: Sequence[ClientJob], datas: Sequence[Sequence[TokenizedExample]], train: TrainConfig,
             *, seed: int, client_states: dict[int, ClientState],
             on_step: Callable[[int, int, int, float], None] | None = None
             ) -> list[tuple[ClientUpdate, ClientState]]:
    """:func:`fedit.client.job.run_job` for several jobs trained together (same checks, the same
    corrections per job, the same client-side transforms); ``on_step(client, step, total, loss)``."""
    runs, states = [], []
    for job, data in zip(jobs, datas):
        check_client_config(job.config)
        state: ClientState = dict(client_states.get(job.client_id) or {})
        corrections = job_corrections(job, trainer.device, state)
        callback = None if on_step is None else (lambda s, t, loss, cid=job.client_id: on_step(cid, s, t, loss))
        runs.append(ClientRun(job.client_id, job.round, job.state, data, job_train_config(train, job.config),
                              corrections, callback, step_schedule(job)))
        states.append(state)
    updates = train_clients(trainer, runs, seed=seed)
    out = []
    for job, update, state in zip(jobs, updates, states):
        out.append((transform_update(update, job, state), state))
    return out
