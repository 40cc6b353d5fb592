"""What the report says about each system's training: wall time, tokens, bytes communicated and
the training-loss curve, on one x-axis (optimizer steps; for FedIT summed over the clients of
each round, the budget the centralized system is given).

The baselines record their per-step loss while training (``train.json``); the federated run's
figures are read back from its ``metrics.jsonl`` (client records: steps, tokens, train_loss;
round records: seconds and, where the run records them, ``bytes_*`` fields).
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.client.job import ClientJob, run_job
from fedit.experiment.systems import SystemSpec, spec_record
from fedit.fileio import atomic_write_text
from fedit.model import AdapterState, load_adapter_state, model_origin, save_adapter
from fedit.runners.checkpoint import client_metrics
from fedit.runners.summary import model_card

if TYPE_CHECKING:
    from fedit.experiment.seeds import SeedPlan
    from fedit.experiment.tracking import ExperimentProgress
    from fedit.runners.common import Workbench

logger = logging.getLogger(__name__)


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
        reported = client_metrics(rec)
        if rec.get("type") == "client" and reported.get("tokens"):
            loss = reported.get("train_loss")
            acc = per_round[int(rec["round"])]
            if loss is not None and math.isfinite(loss):
                acc[0] += loss * reported["tokens"]
            acc[1] += reported["tokens"]
            acc[2] += reported.get("steps", 0)
    curve, done = [], 0
    for r in sorted(per_round):
        loss_x_tokens, tokens, n_steps = per_round[r]
        done += n_steps
        curve.append([done, loss_x_tokens / tokens if tokens else None])
    round_recs = [r for r in records if r.get("type") == "round" and r.get("round", 0) >= 1]
    nbytes: dict[str, float] = defaultdict(float)
    for rec in round_recs:
        for key, value in rec.items():
            if key.startswith("bytes_") and not key.endswith("_total") and isinstance(value, (int, float)):
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


def train_baseline(bench: Workbench, plan: SeedPlan, spec: SystemSpec, folder: Path,
                   tracker: ExperimentProgress) -> tuple[AdapterState, dict[str, Any]]:
    """Train a local-only or centralized system as one continuous client job (or reuse the adapter
    in ``folder`` if it was trained for this spec); its per-step loss goes into train.json."""
    adapter_dir, stored = folder / "adapter", folder / "train.json"
    if adapter_dir.is_dir() and stored.is_file():
        train = json.loads(stored.read_text())
        if train.get("spec") == spec_record(spec):
            logger.info("%s: reusing the trained adapter in %s", spec.name, adapter_dir)
            tracker.skip(spec.steps)
            return load_adapter_state(adapter_dir), train
    examples = plan.client_tok[spec.client] if spec.kind == "local" else \
        [ex for part in plan.client_tok for ex in part]
    client_id = spec.client if spec.kind == "local" else len(plan.clients)  # centralized: its own id
    job = ClientJob(client_id, 0, plan.initial_state, {"local_steps": spec.steps})
    curve: list[float] = []
    with tracker.phase(f"{spec.name} steps", spec.steps) as bar:
        def on_step(step: int, total: int, loss: float) -> None:
            curve.append(loss)
            bar.advance(loss=loss)

        update, _ = run_job(bench.trainer, job, examples, plan.cfg.train, seed=plan.seed, on_step=on_step)
    train = {"spec": spec_record(spec), "examples": len(examples), **update.metrics, "loss_curve": curve}
    cfg = plan.cfg
    card = model_card([f"System {spec.name} of a fedit experiment: {spec.describe()} "
                       f"(batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, seed {plan.seed})"],
                      model_origin(cfg.model.model, bench.base.path), Path(*adapter_dir.parts[-3:]))
    save_adapter(bench.model, update.state, adapter_dir, bench.base.path, tokenizer=bench.tokenizer, card=card)
    atomic_write_text(stored, json.dumps(train, indent=1, default=float) + "\n")
    return update.state, train
