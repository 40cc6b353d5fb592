"""The run directory every runner writes: config.yaml, metrics.jsonl, checkpoints/, final/, plus
``provenance.json`` (code, libraries, machine, base model), ``data.json`` (data fingerprint),
loss.png, and the experiment tracker's files (``--logger``, fedit.runners.loggers).

It owns the rules that keep earlier work safe: a fresh run never overwrites another run's
directory, and ``--resume`` continues only a run made with the same settings and the same data
(:meth:`RunDir.check` says so before anything is written), from its newest intact checkpoint.
Every record goes through :meth:`RunDir.log` (and every local step of the simulation through
:meth:`RunDir.log_step`), so the tracker sees exactly what metrics.jsonl holds.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from fedit.config import Config, dump_config, flag
from fedit.data.fingerprint import check_same_data, with_absolute_paths
from fedit.errors import CheckpointError, ConfigError
from fedit.fileio import atomic_write_text, remove_stale_temporaries
from fedit.runners.checkpoint import (Checkpoint, MetricsLog, checkpoint_round, checkpoints, latest_checkpoint,
                                      load_checkpoint, save_checkpoint, utc_now)
from fedit.runners.loggers import RunLogger, open_logger
from fedit.runners.loss_plot import plot_loss

logger = logging.getLogger(__name__)

# Settings a resumed run may change: they do not alter what was already computed.
RESUMABLE_CHANGES = {("federation", "rounds"), ("federation", "keep_checkpoints"), ("federation", "logger"),
                     ("train", "gradient_checkpointing")}
DATA_FILE = "data.json"
PROVENANCE_FILE = "provenance.json"


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metrics = MetricsLog(self.path / "metrics.jsonl")
        self.adapter_config: Any = None   # a peft config: makes every checkpoint a PEFT folder
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

    def check(self, cfg: Config, resume: bool, fingerprint: dict[str, Any] | None = None) -> None:
        """Refuse (one line, nothing written) to start ``cfg`` in this directory: another run is
        there, or --resume would change its settings, shorten it, or read other data."""
        saved = self.saved_config()
        if saved is None:
            if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
                raise ConfigError(f"--out: {self.path} exists, is not empty and holds no fedit run "
                                  "(no config.yaml); choose another --out")
            return
        if not resume:
            if self.has_progress():
                raise ConfigError(f"--out: {self.path} already holds a run; pass --resume to continue it "
                                  "or choose another --out")
            return
        check_resumable(saved, cfg, self.config_file)
        newest = latest_checkpoint(self.path)
        if newest is not None and checkpoint_round(newest) > cfg.federation.rounds:
            raise CheckpointError(f"--rounds {cfg.federation.rounds}: the run in {self.path} already completed "
                                  f"{checkpoint_round(newest)} rounds; --rounds can only extend a run")
        data_file = self.path / DATA_FILE
        if fingerprint is not None and data_file.is_file():
            check_same_data(json.loads(data_file.read_text()), fingerprint)

    def prepare(self, cfg: Config, resume: bool, *, fingerprint: dict[str, Any] | None = None,
                provenance: dict[str, Any] | None = None) -> Checkpoint | None:
        """Create (or reopen with --resume) the directory; the checkpoint to continue from, if any.
        ``fingerprint`` (data.json) and ``provenance`` (provenance.json) are recorded with it."""
        self.check(cfg, resume, fingerprint)
        fresh = self.saved_config() is None or not resume
        self.path.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.path)
        remove_stale_temporaries(self.path / "checkpoints")
        if fresh and self.saved_config() is not None:  # an earlier start that stopped before round 1
            logger.info("%s has no finished round yet: starting it again", self.path)
        if fingerprint is not None and (fresh or not (self.path / DATA_FILE).is_file()):
            atomic_write_text(self.path / DATA_FILE, json.dumps(fingerprint, indent=1) + "\n")
        if provenance is not None:
            self._write_provenance(provenance, fresh)
        ckpt = None if fresh else self._newest_intact_checkpoint()
        if ckpt is None:  # a resumed run writes it once the strategy accepted the checkpoint (save_config)
            self.save_config(cfg)
        self.metrics.truncate_after(ckpt.round if ckpt else -1)
        if ckpt is None and not fresh:
            logger.info("no complete round in %s yet: starting from round 1", self.path)
        elif ckpt is not None:
            logger.info("resuming %s after round %d", self.path, ckpt.round)
        self._open = True
        self.tracker = open_logger(cfg, self.path, self.metrics.read())
        return ckpt

    def save_config(self, cfg: Config) -> None:
        """Write config.yaml. A resumed run writes it once the strategy has accepted the checkpoint
        (Federation.start), so a refused resume (e.g. beyond a privacy budget) leaves it as it was."""
        from fedit.provenance import provenance

        prov = provenance()
        rev = f" (git {prov['git']})" if prov.get("git") else ""
        header = (f"# fedit {prov.get('fedit') or 'unknown'}{rev}: the resolved config of this run "
                  f"(repeat it with --config {self.config_file})\n")
        atomic_write_text(self.config_file, header + dump_config(cfg))

    def _write_provenance(self, info: dict[str, Any], fresh: bool) -> None:
        """provenance.json: who made the run (first start); each resume is appended to ``resumed``."""
        path = self.path / PROVENANCE_FILE
        record = {**info, "started": utc_now()}
        if not fresh and path.is_file():
            first = json.loads(path.read_text())
            session = {"time": record["started"], "fedit": info.get("fedit"), "git": info.get("git")}
            record = {**first, "resumed": [*first.get("resumed", []), session]}
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    def _newest_intact_checkpoint(self) -> Checkpoint | None:
        """The newest checkpoint that reads back; damaged ones are named and skipped."""
        found = checkpoints(self.path)
        for path in reversed(found):
            try:
                return load_checkpoint(path)
            except CheckpointError as exc:
                logger.warning("checkpoint %s is damaged (%s); trying the one before it", path,
                               str(exc).split(": cannot read checkpoint ", 1)[-1])
        if found:
            raise CheckpointError(f"--resume: every checkpoint in {self.path / 'checkpoints'} is damaged; "
                                  "start the run again with another --out")
        return None

    def has_progress(self) -> bool:
        """True once a round has finished (a checkpoint exists): that work must not be overwritten."""
        return latest_checkpoint(self.path) is not None

    def checkpoint(self, ckpt: Checkpoint, keep: int) -> None:
        save_checkpoint(self.path, ckpt, keep, self.adapter_config)

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.write(record)
        if self.tracker is not None:
            self.tracker.record(record)

    def log_step(self, loss: float, lr: float, input_tokens: int, seconds: float, client: int | None = None) -> None:
        """One local optimizer step (of ``client``, in the simulation), for the tracker only."""
        if self.tracker is not None:
            self.tracker.step(loss, lr, input_tokens, seconds, client)

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
    """Refuse to resume with settings that differ from the ones the run was made with (data
    paths compared as absolute paths: older runs stored them as typed)."""
    old, new = with_absolute_paths(saved).to_dict(), with_absolute_paths(cfg).to_dict()
    for section, values in old.items():
        for key, value in values.items():
            if (section, key) in RESUMABLE_CHANGES or new[section][key] == value:
                continue
            raise CheckpointError(f"--resume: {origin} was made with {flag(key)} {value!r}, "
                                  f"not {new[section][key]!r}; drop the flag or choose another --out")
