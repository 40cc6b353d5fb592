"""Per-round checkpoints and the metrics log of a run directory, written so a crash never
leaves a half-written file behind: every checkpoint is built in a temporary folder and renamed
into place, and the newest complete one is what ``--resume`` continues from.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedit.errors import CheckpointError
from fedit.fileio import atomic_write_text
from fedit.model import AdapterState

logger = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "state.pt"


@dataclass
class Checkpoint:
    round: int                    # last completed round (1-based)
    adapter: AdapterState
    strategy: dict[str, Any]
    extra: dict[str, Any]


def save_checkpoint(run_dir: Path, ckpt: Checkpoint, keep: int = 2) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"round_{ckpt.round:04d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in ckpt.adapter.items()}, str(tmp / ADAPTER_FILE))
    torch.save({"round": ckpt.round, "strategy": ckpt.strategy, "extra": ckpt.extra}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(_complete(root))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.glob("round_*") if (p / ADAPTER_FILE).is_file() and (p / STATE_FILE).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(_complete(run_dir / "checkpoints"))
    return found[-1] if found else None


def load_checkpoint(path: Path) -> Checkpoint:
    try:
        adapter = load_file(str(path / ADAPTER_FILE))
        state = torch.load(path / STATE_FILE, weights_only=True)
    except Exception as exc:  # corrupt or foreign files: say which
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    return Checkpoint(state["round"], adapter, state["strategy"], state.get("extra", {}))


class MetricsLog:
    """``metrics.jsonl``: one JSON line per client update and per round, flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

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
        keep = [r for r in self.read() if r.get("round", 0) <= round_idx]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in keep))
