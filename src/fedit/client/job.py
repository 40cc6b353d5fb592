"""One client job: (client id, global adapter, an open client-config mapping) -> ClientUpdate.

The server's strategy builds a :class:`ClientJob` per sampled client; every runner delivers it
(in-process call, Flower message) to :func:`run_job`, the one function that trains a client.
Method-specific client settings travel as keys of ``job.config`` (plain scalars, so they fit a
Flower ``ConfigRecord``) and tensors as ``job.arrays``; a new client-side knob is one entry in
:data:`CLIENT_KEYS` (derived from the methods' declarations) plus the code that reads it, not a
parameter threaded through every layer.

A client may keep state between the rounds it takes part in (SCAFFOLD's control variate, the
error feedback of compressed updates): ``run_job`` takes and returns that ``client_state``; the
simulation keeps it per client (and checkpoints it), a Flower node keeps it in its context.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from fedit.client.compress import CodecClient
from fedit.client.runs import ClientRun, Correction
from fedit.client.types import ClientJob, ClientState, ClientUpdate, PooledUpdate, Scalar  # noqa: F401 (re-exported)
from fedit.config import TrainConfig
from fedit.data.prompts import TokenizedExample
from fedit.errors import ConfigError
from fedit.method_api import ClientKey, Method
from fedit.registry import all_methods
from fedit.schedules import SCHEDULES, step_lr

# The run's own keys of job.config; every method adds its own (fedit.methods: its options marked
# ``client=`` and its ``client_keys``), so a new method's knob is declared once, in its own module.
RUN_KEYS: dict[str, ClientKey] = {
    "lr": ClientKey(float, "local learning rate of this round (overrides --lr)"),
    "local_steps": ClientKey(int, "optimizer steps of this round (overrides --local-steps/--local-epochs)"),
    "lora_rank": ClientKey(int, "rank of the adapter this client trains, at most the global --lora-r "
                                "(heterogeneous clients; default: the global adapter's)"),
    "lora_targets": ClientKey(str, "modules this client adapts, within the global adapter's: all-linear or a "
                                   "comma list (default: all of the global adapter's)"),
    # A per-step learning-rate schedule across the federation (fedit.server.scheduled, unit "step"):
    # lr is then the peak and the client follows fedit.schedules.step_lr over its own steps.
    "lr_schedule": ClientKey(str, "per-step schedule shape (constant, cosine, linear); lr is its peak"),
    "lr_warmup_steps": ClientKey(int, "per-step schedule: warmup length in local steps"),
    "lr_total_rounds": ClientKey(int, "per-step schedule: the rounds the schedule spans"),
}
CODEC_KEY = ClientKey(str, "code the update's delta with this codec: fp16, bf16, int8, topk:K (fedit.client.compress)")


def client_half(method: Method) -> Any:
    """A method's client half (a codec without its own gets the generic coder for its name)."""
    if method.client is None and method.kind == "codec":
        return CodecClient(method.name)
    return method.half("client")


def method_keys() -> dict[str, ClientKey]:
    keys: dict[str, ClientKey] = {}
    for method in all_methods():
        keys.update(method.all_client_keys())
        if method.kind == "codec":
            keys["compress"] = CODEC_KEY
    return keys


# Every key a client understands in job.config. Unknown keys are refused (a client older than its
# server must not silently ignore a method's setting).
CLIENT_KEYS: dict[str, ClientKey] = {**RUN_KEYS, **method_keys()}


def check_client_config(config: Mapping[str, Any]) -> None:
    """Raise ConfigError (one line) for an unknown key or a value of the wrong type."""
    for key, value in config.items():
        spec = CLIENT_KEYS.get(key)
        if spec is None:
            raise ConfigError(f"client config: unknown key {key!r} (known: {', '.join(sorted(CLIENT_KEYS))})")
        ok = isinstance(value, spec.type) and not (isinstance(value, bool) and spec.type is not bool)
        if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ConfigError(f"client config {key}: expected {spec.type.__name__}, got {value!r}")


def job_train_config(train: TrainConfig, config: Mapping[str, Any]) -> TrainConfig:
    """The run's local-training settings with this job's overrides applied."""
    changes: dict[str, Any] = {}
    if "lr" in config:
        changes["lr"] = float(config["lr"])
    if "local_steps" in config:
        changes["local_steps"] = int(config["local_steps"])
    return dataclasses.replace(train, **changes) if changes else train


def job_lora(config: Mapping[str, Any]) -> tuple[int | None, str] | None:
    """(rank, targets) of the client's own adapter, or None for the global one."""
    if "lora_rank" not in config and "lora_targets" not in config:
        return None
    rank = config.get("lora_rank")
    return (None if rank is None else int(rank)), str(config.get("lora_targets", "all-linear"))


def proximal_correction(job: ClientJob, device: torch.device, state: ClientState) -> Correction | None:
    """FedProx: the gradient of mu/2 * ||w - w_global||^2, i.e. mu * (w - w_global)."""
    mu = float(job.config.get("proximal_mu", 0.0))
    if mu <= 0:
        return None
    anchor = {k: v.to(device=device, dtype=torch.float32) for k, v in job.state.items()}

    def correct(params: Mapping[str, torch.nn.Parameter]) -> None:
        with torch.no_grad():
            for key, p in params.items():
                if p.grad is not None and key in anchor:   # not a personal part (fedsa's B, dual's local)
                    p.grad.add_(p.detach() - anchor[key].to(p.dtype), alpha=mu)

    return correct


def step_schedule(job: ClientJob) -> Callable[[int, int], float] | None:
    """The job's per-step learning rate, ``(step, steps this round) -> lr``, if it names a schedule."""
    shape = job.config.get("lr_schedule")
    if shape is None:
        return None
    if shape not in SCHEDULES:
        raise ConfigError(f"client config lr_schedule: {shape!r} is not one of {', '.join(SCHEDULES)}")
    peak = float(job.config["lr"])
    warmup = int(job.config.get("lr_warmup_steps", 0))
    rounds = int(job.config.get("lr_total_rounds", job.round))
    return lambda step, steps: step_lr(peak, shape, job.round, rounds, step, steps, warmup)


# Builds the correction a job asks for, or None: (job, device, client state) -> Correction | None.
# The client state is this job's own copy (what run_job returns): a correction that learns
# something during training (SCAFFOLD's gradient mean) leaves it there for a client transform.
CorrectionBuilder = Callable[[ClientJob, torch.device, ClientState], Correction | None]
# The methods' client halves in registry order (kind, then method): their corrections, and their
# transforms of the update after training (strategy, privacy, attack, codec: what leaves the client
# is what is coded). Each reads its own keys of the job's client config and is a no-op without them.
@functools.lru_cache(maxsize=1)
def client_halves() -> tuple[Any, ...]:
    return tuple(half for m in all_methods() if (half := client_half(m)) is not None)


def job_corrections(job: ClientJob, device: torch.device, state: ClientState) -> list[Correction]:
    """The corrections this job asks for, in registry order (SCAFFOLD's sees the data loss alone)."""
    builders = [h.correction for h in client_halves() if hasattr(h, "correction")]
    return [c for build in builders if (c := build(job, device, state)) is not None]


def transform_update(update: ClientUpdate, job: ClientJob, state: ClientState) -> ClientUpdate:
    """The update after every method's client-side transform (run_job and the fused path alike)."""
    for half in client_halves():
        if hasattr(half, "transform"):
            update = half.transform(update, job, state)
    return update


def run_job(trainer, job: ClientJob, examples: Sequence[TokenizedExample], train: TrainConfig, *,
            seed: int, client_state: ClientState | None = None,
            on_step: Callable[[int, int, float], None] | None = None) -> tuple[ClientUpdate, ClientState]:
    """Train one client for one round: the same function in every runner.

    ``trainer`` is a :class:`fedit.client.train.LocalTrainer` on the resident model. Returns the
    update (after the registered client-side transforms) and the client's state for its next round.
    """
    states = {} if client_state is None else {job.client_id: client_state}
    each = None if on_step is None else (lambda client_id, step, total, loss: on_step(step, total, loss))
    return run_jobs(trainer, [job], [examples], train, seed=seed, client_states=states, on_step=each)[0]


def run_jobs(trainer, jobs: Sequence[ClientJob], datas: Sequence[Sequence[TokenizedExample]], train: TrainConfig,
             *, seed: int, client_states: Mapping[int, ClientState],
             on_step: Callable[[int, int, int, float], None] | None = None
             ) -> list[tuple[ClientUpdate, ClientState]]:
    """:func:`run_job` for several jobs, trained together in shared passes where the trainer can
    (fedit.client.multilora): the same checks, corrections and client-side transforms per job;
    ``on_step(client, step, total, loss)``."""
    runs, states = [], []
    for job, data in zip(jobs, datas):
        check_client_config(job.config)
        state: ClientState = dict(client_states.get(job.client_id) or {})
        corrections = job_corrections(job, trainer.device, state)
        callback = None if on_step is None else (lambda s, t, loss, cid=job.client_id: on_step(cid, s, t, loss))
        run = ClientRun(job.client_id, job.round, job.state, data, job_train_config(train, job.config),
                        corrections, callback, step_schedule(job), job_lora(job.config))
        for half in client_halves():  # what a method changes in the run itself (a personal part)
            if hasattr(half, "prepare"):
                run = half.prepare(run, job, state, seed, trainer.initial_state)
        runs.append(run)
        states.append(state)
    out = []
    for job, update, state in zip(jobs, trainer.train(runs, seed=seed), states):
        out.append((transform_update(update, job, state), state))
    return out
