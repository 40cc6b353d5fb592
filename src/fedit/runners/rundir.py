"""The run directory every runner writes: config.yaml, metrics.jsonl, checkpoints/, final/,
loss.png, and the experiment tracker's files (``--logger``, fedit.runners.loggers).

It owns the rules that keep earlier work safe: a fresh run never overwrites another run's
directory, and ``--resume`` continues only a run made with the same settings. Every record goes
through :meth:`RunDir.log` (and every local step of the simulation through :meth:`RunDir.log_step`),
so the tracker sees exactly what metrics.jsonl holds.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from fedit.config import Config, dump_config, flag
from fedit.errors import CheckpointError, ConfigError
from fedit.fileio import atomic_write_text
from fedit.runners.checkpoint import (Checkpoint, MetricsLog, latest_checkpoint,
                                      load_checkpoint, save_checkpoint)
from fedit.runners.loggers import RunLogger, open_logger
from fedit.runners.loss_plot import plot_loss

logger = logging.getLogger(__name__)

# Settings a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = {("federation", "rounds"), ("federation", "keep_checkpoints"), ("federation", "logger"),
                     ("train", "gradient_checkpointing")}


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.tracker: RunLogger | None = None
        self._open = False   # prepared by this process: close() may write loss.png

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def saved_config(self) -> Config | None:
        if not self.config_file.exists():
            return None
        return Config.from_dict(yaml.safe_load(self.config_file.read_text()), str(self.config_file))

    def prepare(self, cfg: Config, resume: bool) -> Checkpoint | None:
        """Create (or reopen with --resume) the directory and open the run's tracker; the
        checkpoint to continue from, if any."""
        ckpt = self._prepare(cfg, resume)
        self._open = True
        self.tracker = open_logger(cfg, self.path, self.metrics.read())
        return ckpt

    def _prepare(self, cfg: Config, resume: bool) -> Checkpoint | None:
        saved = self.saved_config()
        if saved is None:
            if self.path.exists() and any(self.path.iterdir()):
                raise ConfigError(f"--out: {self.path} exists, is not empty and holds no fedit run "
                                  "(no config.yaml); choose another --out")
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_file, dump_config(cfg))
            return None
        if not resume and self.has_progress():
            raise ConfigError(f"--out: {self.path} already holds a run; pass --resume to continue it "
                              "or choose another --out")
        if not resume:  # an earlier start that stopped before finishing a round: start again
            logger.info("%s has no finished round yet: starting it again", self.path)
            atomic_write_text(self.config_file, dump_config(cfg))
            self.metrics.truncate_after(-1)
            return None
        check_resumable(saved, cfg, self.config_file)
        ckpt_path = latest_checkpoint(self.path)
        if ckpt_path is None:
            logger.info("no complete round in %s yet: starting from round 1", self.path)
            self.save_config(cfg)
            self.metrics.truncate_after(-1)
            return None
        ckpt = load_checkpoint(ckpt_path)
        self.metrics.truncate_after(ckpt.round)
        logger.info("resuming %s after round %d", self.path, ckpt.round)
        return ckpt

    def save_config(self, cfg: Config) -> None:
        """Write config.yaml. A resumed run writes it once the strategy has accepted the checkpoint
        (Federation.start), so a refused resume (e.g. beyond a privacy budget) leaves it as it was."""
        atomic_write_text(self.config_file, dump_config(cfg))

    def has_progress(self) -> bool:
        """True once a round has finished (a checkpoint exists): that work must not be overwritten."""
        return latest_checkpoint(self.path) is not None

    def checkpoint(self, ckpt: Checkpoint, keep: int) -> None:
        save_checkpoint(self.path, ckpt, keep)

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.tracker is not None:
            self.tracker.record(record)

    def log_step(self, loss: float, lr: float, input_tokens: int, seconds: float) -> None:
        """One local optimizer step (the simulation's clients), for the tracker only."""
        if self.tracker is not None:
            self.tracker.step(loss, lr, input_tokens, seconds)

    def close(self) -> None:
        """Draw loss.png from metrics.jsonl and close the tracker (safe to call more than once;
        does nothing unless :meth:`prepare` opened the directory in this process)."""
        if not self._open:
            return
        self._open = False
        if plot_loss(self.metrics.read(), self.path / "loss.png"):
            logger.info("loss per round drawn in %s", self.path / "loss.png")
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None


def check_resumable(saved: Config, cfg: Config, origin: Path) -> None:
    """Refuse to resume with settings that differ from the ones the run was made with."""
    old, new = saved.to_dict(), cfg.to_dict()
    for section, values in old.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES or new[section][key] == value:
                continue
            raise CheckpointError(f"--resume: {origin} was made with {flag(key)} {value!r}, "
                                  f"not {new[section][key]!r}; drop the flag or choose another --out")
