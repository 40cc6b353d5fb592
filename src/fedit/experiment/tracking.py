"""One progress display for a whole experiment: an outer bar over all pending work, so its
time-left estimate covers every system; inner bars show the current system's rounds, clients,
steps and generation batches. And :func:`track_system`: every system as its own run of the
``--logger`` tracker.

The outer bar counts work units of about one training step each. Measured on 2 CPU cores with
SmolLM2 (batch 8, max length 256): a batch of 8 greedy answers costs about max_new_tokens / 16
steps, a held-out loss pass over 8 records about a quarter of a step (see ``units``).
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from fedit.config import Config
from fedit.experiment.systems import SystemSpec
from fedit.progress import Progress, Task
from fedit.runners.checkpoint import MetricsLog
from fedit.runners.loggers import STEP, config_hparams, open_logger

SYSTEM = "system"   # the tracker axis (TensorBoard folder) of a system's final figures
SYSTEM_METRICS = ("system/loss", "system/perplexity", "system/rouge_l", "system/exact_match")


def units(*, gen_batches: int = 0, max_new_tokens: int = 0, loss_batches: int = 0) -> float:
    """Work units (about one training step each) of generation and held-out loss batches."""
    return gen_batches * max_new_tokens / 16 + loss_batches / 4


class _Both(Task):
    def __init__(self, inner: Task, outer: Task, scale: float = 1.0) -> None:
        self.inner, self.outer, self.scale = inner, outer, scale

    def advance(self, n: int = 1, **fields) -> None:
        self.inner.advance(n, **fields)
        self.outer.advance(n * self.scale)


class _Forwarding(Progress):
    """Hands bars to the real progress; bars of training steps also move the outer bar."""

    def __init__(self, real: Progress, outer: Task) -> None:
        self.real, self.outer = real, outer

    @contextmanager
    def task(self, description: str, total: int | None, keep: bool = False) -> Iterator[Task]:
        with self.real.task(description, total, keep=keep) as inner:
            yield _Both(inner, self.outer) if description.endswith(" steps") else inner


class ExperimentProgress:
    def __init__(self, progress: Progress, total: float) -> None:
        self.progress, self.total = progress, total
        self._stack = ExitStack()
        self.outer: Task = Task()

    def __enter__(self) -> ExperimentProgress:
        self.outer = self._stack.enter_context(self.progress.task("experiment", self.total, keep=True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    @contextmanager
    def phase(self, description: str, total: int | None, scale: float = 1.0) -> Iterator[Task]:
        """A bar for one step of the work; each advance moves the outer bar by ``scale`` units."""
        with self.progress.task(description, total) as inner:
            yield _Both(inner, self.outer, scale)

    def skip(self, n: float) -> None:
        """Work done without a bar of its own (loss passes) or already done earlier (a reused adapter)."""
        self.outer.advance(n)

    def forwarding(self) -> Progress:
        """A Progress for the fedit Simulation whose step bars also count on the outer bar."""
        return _Forwarding(self.progress, self.outer)


def track_system(cfg: Config, folder: Path, spec: SystemSpec, seed: int, result: dict[str, Any]) -> None:
    """Record one evaluated system of an experiment as a tracker run of its own, in its folder: its
    final figures as ``system/*`` with the config plus system, kind, client, steps and seed as
    hyperparameters (TensorBoard: ``NAME/tensorboard/system``, so ``tensorboard --logdir OUT/systems``
    tables every system in its HParams view), and a baseline's per-step ``train/loss`` (a local one's
    also as ``clients/<id>/loss``). The fedit system's rounds and steps are in its run already."""
    history = MetricsLog(folder / "metrics.jsonl").read() if spec.kind == "fedit" else []
    run = open_logger(cfg, folder, history, record_config=False)
    if run is None:
        return
    system = {"system": spec.name, "kind": spec.kind, "client": -1 if spec.client is None else spec.client,
              "steps": spec.steps, "seed": seed}
    try:
        run.hparams({**config_hparams(cfg), **system}, SYSTEM_METRICS, axis=SYSTEM)
        overall = result["overall"]
        run.scalars(SYSTEM, 0, {f"system/{k}": overall.get(k) for k in ("loss", "perplexity", "rouge_l",
                                                                          "exact_match")})
        if spec.kind in ("local", "centralized"):
            for step, loss in enumerate(result.get("train", {}).get("loss_curve") or [], start=1):
                if isinstance(loss, (int, float)) and math.isfinite(loss):
                    per_client = {f"clients/{spec.client}/loss": loss} if spec.client is not None else {}
                    run.scalars(STEP, step, {"train/loss": loss, **per_client})
    finally:
        run.close()
