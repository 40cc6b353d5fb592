"""Experiment trackers fed from the run directory: TensorBoard, MLflow, Weights & Biases.

Every record a run writes to ``metrics.jsonl`` goes through :meth:`RunDir.log`, and so does every
local optimizer step of the in-process simulation (through the transport's step callback). A
:class:`RunLogger` turns them into scalars on two axes and hands them to one backend, each through
the library's own writer:

- ``round`` axis (step = round): ``eval/loss``, ``eval/perplexity``, ``eval/<category>/loss``, and
  ``round/<field>`` for every numeric field of the round record (``train_loss``, ``lr``,
  ``lora_gap_mean``, ``seconds``, ``bytes_*``...), ``round/dropped`` (dropped updates).
- ``step`` axis (step = local optimizer steps of the run so far, all clients in turn): in the
  simulation ``train/loss``, ``train/lr`` and ``train/tokens_per_s`` (non-padding input tokens per
  second) of every step; a Flower server sees no steps, so there ``client/<field>`` of every client
  record (``train_loss``, ``lr``, ``tokens``, ``seconds``...) at that client's last step. Either way
  ``clients/<id>/loss`` is the loss of each client on its own curve (the step's loss; on Flower the
  client's round loss).
- hyperparameters: the resolved config (every field, by its flat name) once per run, as TensorBoard
  hparams (with ``eval/loss`` and ``eval/perplexity`` as its metrics), MLflow params and W&B config.

Backends: ``tensorboard`` (torch.utils.tensorboard, event files in RUN/tensorboard/{rounds,steps};
a resumed run purges what the interrupted one logged after its last checkpoint), ``mlflow``
(``$MLFLOW_TRACKING_URI``, else RUN/mlflow.db; one MLflow run per fedit run, resumed by id) and
``wandb`` (offline unless ``$WANDB_MODE`` says otherwise, files in RUN/wandb; ``wandb sync`` uploads).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any, Protocol, Sequence

from fedit.config import Config, flag
from fedit.errors import ConfigError
from fedit.runners.checkpoint import client_metrics

logger = logging.getLogger(__name__)

ROUND, STEP = "round", "step"


RUN_METRICS = ("eval/loss", "eval/perplexity")


class Backend(Protocol):
    def scalars(self, axis: str, step: int, values: dict[str, float]) -> None: ...

    def hparams(self, params: dict[str, Any], metrics: Sequence[str], axis: str = ROUND) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def config_hparams(cfg: Config) -> dict[str, Any]:
    """The resolved config as flat hyperparameters (numbers, strings and booleans; others as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.flat().items()}


def round_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The scalars of a round record (see the module docstring for the names)."""
    out: dict[str, float] = {}
    ev = record.get("eval") or {}
    for name in ("loss", "perplexity"):
        if _numeric((ev.get("overall") or {}).get(name)):
            out[f"eval/{name}"] = float(ev["overall"][name])
    for category, values in (ev.get("per_category") or {}).items():
        if _numeric(values.get("loss")):
            out[f"eval/{category}/loss"] = float(values["loss"])
    for key, value in record.items():
        if key in ("type", "round", "eval"):
            continue
        if _numeric(value):
            out[f"round/{key}"] = float(value)
        elif isinstance(value, dict):   # e.g. a method's nested metrics: one level, numbers only
            out.update({f"round/{key}/{k}": float(v) for k, v in value.items() if _numeric(v)})
    if "dropped" in record:
        out["round/dropped"] = float(len(record["dropped"] or []))
    return out


class RunLogger:
    """Scalars of one run for one backend; ``step`` counts local optimizer steps across the run."""

    def __init__(self, backend: Backend, steps_done: int = 0) -> None:
        self.backend = backend
        self.global_step = steps_done
        self._per_step = False   # the simulation reports every step; Flower only client records

    def record(self, record: dict[str, Any]) -> None:
        kind = record.get("type")
        if kind == "round":
            self.backend.scalars(ROUND, int(record["round"]), round_scalars(record))
            self.backend.flush()
        elif kind == "client" and not self._per_step:   # the steps themselves are logged already
            reported = client_metrics(record)
            self.global_step += int(reported.get("steps") or 0)
            merged = {**record, **reported}
            values = {f"client/{k}": float(v) for k, v in merged.items() if _numeric(v) and k not in ("round", "client")}
            if "client" in record and _numeric(merged.get("train_loss")):
                values[f"clients/{record['client']}/loss"] = float(merged["train_loss"])
            self.backend.scalars(STEP, self.global_step, values)

    def step(self, loss: float, lr: float, input_tokens: int, seconds: float, client: int | None = None) -> None:
        self._per_step = True
        self.global_step += 1
        values = {"train/loss": loss, "train/lr": lr}
        if seconds > 0:
            values["train/tokens_per_s"] = input_tokens / seconds
        if client is not None:
            values[f"clients/{client}/loss"] = loss
        self.backend.scalars(STEP, self.global_step, {k: float(v) for k, v in values.items() if _numeric(v)})

    def hparams(self, params: dict[str, Any], metrics: Sequence[str] = RUN_METRICS, axis: str = ROUND) -> None:
        self.backend.hparams(params, metrics, axis)

    def scalars(self, axis: str, step: int, values: dict[str, float]) -> None:
        self.backend.scalars(axis, step, {k: float(v) for k, v in values.items() if _numeric(v)})
        self.backend.flush()

    def close(self) -> None:
        self.backend.close()


class TensorBoardBackend:
    """torch.utils.tensorboard's SummaryWriter, one per axis (so each can purge on resume)."""

    def __init__(self, root: Path, purge: dict[str, int]) -> None:
        self.root, self.purge = root, purge
        self.writers: dict[str, Any] = {}
        for axis in (ROUND, STEP):
            self._writer(axis)

    def _writer(self, axis: str):
        """The axis's writer (``rounds``, ``steps``, or a folder named after another axis, which starts
        afresh each time: its earlier events are purged)."""
        if axis not in self.writers:
            from torch.utils.tensorboard import SummaryWriter

            folder = self.root / {ROUND: "rounds", STEP: "steps"}.get(axis, axis)
            self.writers[axis] = SummaryWriter(str(folder), purge_step=self.purge.get(axis, 0), flush_secs=30)
        return self.writers[axis]

    def scalars(self, axis: str, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer(axis).add_scalar(tag, value, step)

    def hparams(self, params: dict[str, Any], metrics: Sequence[str], axis: str = ROUND) -> None:
        """The HParams dashboard's records, in the axis's run (where its metrics are scalars). The
        dashboard keeps the first record of a run: a run gets one."""
        from torch.utils.tensorboard.summary import hparams

        writer = self._writer(axis).file_writer
        for summary in hparams(params, {name: 0.0 for name in metrics}):
            writer.add_summary(summary)
        writer.flush()

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class MlflowBackend:
    """An MLflow run (``$MLFLOW_TRACKING_URI`` or RUN/mlflow.db), reopened by id on --resume."""

    def __init__(self, run_dir: Path, cfg: Config) -> None:
        from mlflow import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{run_dir.absolute() / 'mlflow.db'}"
        self.client = MlflowClient(tracking_uri=uri)
        id_file = run_dir / "mlflow_run_id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            exp = self.client.get_experiment_by_name("fedit")
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment("fedit")
            self.run_id = self.client.create_run(exp_id, run_name=run_dir.absolute().name).info.run_id
            from mlflow.entities import Param

            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in cfg.flat().items()])
            id_file.write_text(self.run_id + "\n")
        self.uri = uri

    def scalars(self, axis: str, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(re.sub(r"[^\w\-./ ]", "_", key), value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def hparams(self, params: dict[str, Any], metrics: Sequence[str], axis: str = ROUND) -> None:
        """Params not logged yet (MLflow refuses to change one)."""
        from mlflow.entities import Param

        known = self.client.get_run(self.run_id).data.params
        new = [Param(k, str(v)) for k, v in params.items() if k not in known]
        if new:
            self.client.log_batch(self.run_id, params=new)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbBackend:
    """A wandb run in RUN/wandb, offline unless $WANDB_MODE is set; one run id per fedit run."""

    def __init__(self, run_dir: Path, cfg: Config) -> None:
        import wandb

        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "fedit"), dir=str(run_dir.absolute()),
                              mode=os.environ.get("WANDB_MODE", "offline"), id=run_id, resume="allow",
                              name=run_dir.absolute().name, config=cfg.to_dict(),
                              settings=wandb.Settings(quiet=True, console="off"))
        for axis, prefixes in ((ROUND, ("eval/*", "round/*")), (STEP, ("train/*", "client/*"))):
            self.run.define_metric(axis)
            for prefix in prefixes:
                self.run.define_metric(prefix, step_metric=axis)

    def scalars(self, axis: str, step: int, values: dict[str, float]) -> None:
        if values:
            self.run.log({axis: step, **values})

    def hparams(self, params: dict[str, Any], metrics: Sequence[str], axis: str = ROUND) -> None:
        self.run.config.update(params, allow_val_change=True)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


def installed(name: str) -> bool:
    module = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}[name]
    return importlib.util.find_spec(module) is not None


def resolve_logger(name: str) -> str:
    """``auto`` -> tensorboard when installed, else none; a named logger must be installed."""
    if name == "auto":
        return "tensorboard" if installed("tensorboard") else "none"
    if name != "none" and not installed(name):
        extra = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}[name]
        raise ConfigError(f"{flag('logger')} {name}: the package is not installed (pip install 'fedit[{extra}]')")
    return name


def open_logger(cfg: Config, run_dir: Path, history: list[dict[str, Any]], *,
                record_config: bool = True) -> RunLogger | None:
    """The run's logger (None for ``--logger none``), continuing after the records in ``history``
    (what metrics.jsonl holds after a resume). A fresh run records the resolved config as its
    hyperparameters (unless ``record_config`` is False: the caller records its own)."""
    name = resolve_logger(cfg.federation.logger)
    if name == "none":
        return None
    rounds = [r["round"] for r in history if r.get("type") == "round"]
    steps = sum(int(client_metrics(r).get("steps") or 0) for r in history if r.get("type") == "client")
    if name == "tensorboard":
        backend: Backend = TensorBoardBackend(run_dir / "tensorboard",
                                              {ROUND: max(rounds) + 1 if rounds else 0, STEP: steps + 1})
    elif name == "mlflow":
        backend = MlflowBackend(run_dir, cfg)
    else:
        backend = WandbBackend(run_dir, cfg)
    logger.info("logging metrics to %s (%s)", name, run_dir / name if name != "mlflow" else backend.uri)
    run = RunLogger(backend, steps)
    if record_config and not history:
        run.hparams(config_hparams(cfg))
    return run
