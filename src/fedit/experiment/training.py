"""What the report says about each system's training: wall time, tokens, bytes communicated and
the training-loss curve, on one x-axis (optimizer steps; for FedIT summed over the clients of
each round, the budget the centralized system is given).

The baselines record their per-step loss while training (``train.json``); the federated run's
figures are read back from its ``metrics.jsonl`` (client records: steps, tokens, train_loss;
round records: seconds and, where the run records them, ``bytes_*`` fields).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:     # a line cut by a crash
            break
    return out


def fedit_training(metrics_file: Path, rounds: int, steps: int) -> dict[str, Any]:
    """The federated run's training record from its metrics.jsonl."""
    records = _read_jsonl(metrics_file)
    per_round: dict[int, list[float]] = defaultdict(lambda: [0.0, 0, 0])   # loss x tokens, tokens, steps
    for rec in records:
        if rec.get("type") == "client" and rec.get("tokens"):
            loss = rec.get("train_loss")
            acc = per_round[int(rec["round"])]
            if loss is not None and math.isfinite(loss):
                acc[0] += loss * rec["tokens"]
            acc[1] += rec["tokens"]
            acc[2] += rec.get("steps", 0)
    curve, done = [], 0
    for r in sorted(per_round):
        loss_x_tokens, tokens, n_steps = per_round[r]
        done += n_steps
        curve.append([done, loss_x_tokens / tokens if tokens else None])
    round_recs = [r for r in records if r.get("type") == "round" and r.get("round", 0) >= 1]
    nbytes: dict[str, float] = defaultdict(float)
    for rec in round_recs:
        for key, value in rec.items():
            if key.startswith("bytes_") and isinstance(value, (int, float)):
                nbytes[key] += value
    return {"rounds": rounds, "steps": steps, "optimizer_steps": done,
            "tokens": int(sum(v[1] for v in per_round.values())),
            "train_loss": curve[-1][1] if curve else None,
            "seconds": sum(r.get("seconds", 0.0) for r in round_recs),
            "loss_curve": curve, "bytes": dict(nbytes)}


def loss_curve(result: dict[str, Any]) -> list[tuple[int, float]]:
    """(optimizer step, training loss) points of a system's result (empty when not recorded)."""
    train = result.get("train", {})
    curve = train.get("loss_curve") or []
    if result.get("spec", {}).get("kind") == "fedit":
        return [(int(s), float(v)) for s, v in curve if v is not None]
    return [(i + 1, float(v)) for i, v in enumerate(curve) if v is not None and math.isfinite(v)]
