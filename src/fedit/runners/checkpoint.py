"""Per-round checkpoints and the metrics log of a run directory, written so a crash never
leaves a half-written file behind: every checkpoint is built in a temporary folder and renamed
into place, and the newest complete one is what ``--resume`` continues from.

A checkpoint folder ``checkpoints/round_NNNN/`` is also a standard PEFT adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``: evaluate or load any round with plain
peft or ``fedit eval --adapter``), plus ``state.pt``, the strategy's and the transport's state.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedit.errors import CheckpointError
from fedit.fileio import apply_umask, atomic_write_text, make_temp_dir
from fedit.model import AdapterState
from fedit.model.lora import ADAPTER_WEIGHTS

logger = logging.getLogger(__name__)

ADAPTER_FILE = ADAPTER_WEIGHTS             # adapter_model.safetensors: a PEFT folder
OLD_ADAPTER_FILE = "adapter.safetensors"   # what checkpoints of older fedit versions hold
STATE_FILE = "state.pt"


@dataclass
class Checkpoint:
    round: int                    # last completed round (1-based)
    adapter: AdapterState
    strategy: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, keep: int = 2, adapter_config: Any = None) -> Path:
    """Write ``checkpoints/round_NNNN`` atomically; ``adapter_config`` (a peft config) makes it a
    PEFT folder. A failed write (a full disk) removes its temporary folder and raises a one-line
    CheckpointError saying that everything saved before is intact."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round_{ckpt.round:04d}"
    tmp = make_temp_dir(final)
    try:
        if adapter_config is not None:
            adapter_config.save_pretrained(str(tmp))
        save_file({k: v.contiguous() for k, v in ckpt.adapter.items()}, str(tmp / ADAPTER_FILE),
                  metadata={"format": "pt"})
        torch.save({"round": ckpt.round, "strategy": ckpt.strategy, "extra": ckpt.extra}, tmp / STATE_FILE)
        apply_umask(tmp)
    except Exception as exc:  # ENOSPC (OSError from safetensors, RuntimeError from torch.save), EIO, ...
        shutil.rmtree(tmp, ignore_errors=True)
        newest = latest_checkpoint(run_dir)
        kept = f"the newest checkpoint, {newest.name}, is intact" if newest else "no round was checkpointed yet"
        raise CheckpointError(f"round {ckpt.round}: cannot write its checkpoint in {root} ({_first_line(exc)}); "
                              f"no data was lost: {kept}; free some space and continue with --resume") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(_complete(root))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _first_line(exc: BaseException) -> str:
    """The first line of an error, without torch's advice to load an unsafe file unsafely (its
    "Weights only load failed ... weights_only=False" text): what was refused, and why."""
    text = str(exc).strip()
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        what = f"an object of type {found.group(1)}" if found else "an object that is not a tensor or a plain value"
        return f"it holds {what}, which fedit never writes (a checkpoint holds tensors and plain values only)"
    return text.splitlines()[0] if text else type(exc).__name__


def _adapter_file(path: Path) -> Path:
    return path / ADAPTER_FILE if (path / ADAPTER_FILE).is_file() else path / OLD_ADAPTER_FILE


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.glob("round_*") if _adapter_file(p).is_file() and (p / STATE_FILE).is_file()]


def checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    return sorted(_complete(run_dir / "checkpoints"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def checkpoint_round(path: Path) -> int:
    """The round a checkpoint folder holds, from its name (``round_0003`` -> 3)."""
    return int(path.name.split("_", 1)[1])


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        adapter = load_file(str(_adapter_file(path)))
        state = torch.load(path / STATE_FILE, weights_only=True)
        return Checkpoint(state["round"], adapter, state["strategy"], state.get("extra", {}))
    except Exception as exc:  # corrupt or foreign files: say which, in one line
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {_first_line(exc)})") from None


def json_safe(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``record`` with every NaN/infinity replaced by None (JSON has neither), and the dotted
    paths of the values replaced (e.g. ``eval.overall.loss``)."""
    bad: list[str] = []

    def clean(value: Any, path: str) -> Any:
        if not isinstance(value, (str, int, float, dict, list, tuple, type(None))):
            try:  # numpy / torch scalars
                value = float(value)
            except (TypeError, ValueError):
                return str(value)
        if isinstance(value, float) and not math.isfinite(value):
            bad.append(path)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value

    return clean(record, ""), bad


def client_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """What a client reported in a ``type: client`` record of metrics.jsonl (its loss, tokens, steps...):
    namespaced under ``metrics`` so it never overwrites the server's fields; older runs logged it flat."""
    return record.get("metrics", record) if isinstance(record.get("metrics"), dict) else record


def utc_now() -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-01-31T12:00:00.123Z``."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MetricsLog:
    """``metrics.jsonl``: one JSON line per client update and per round, flushed as written.

    Every line is strict JSON: a non-finite number is written as null and its path listed in
    ``nonfinite``; every line has ``time``, the UTC wall-clock time it was written (ISO 8601).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        clean, bad = json_safe({k: v for k, v in record.items() if k != "time"})
        if bad:
            clean["nonfinite"] = bad
        clean["time"] = record.get("time") or utc_now()
        with open(self.path, "a") as fh:
            fh.write(json.dumps(clean, allow_nan=False) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash: drop it
                break
        return out

    def truncate_after(self, round_idx: int) -> None:
        """Keep only the records of rounds <= round_idx (a resumed run rewrites later ones)."""
        keep = [json_safe(r)[0] for r in self.read() if r.get("round", 0) <= round_idx]
        atomic_write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep))
