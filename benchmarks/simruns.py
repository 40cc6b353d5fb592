"""Shared by benchmarks/robustness.py and benchmarks/communication.py: a set of `fedit run`
simulations that differ in a few settings, on one resident model, each resumable (a finished run
is read back, not redone), plus the machine description and the smoke-test settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from fedit.config import Config, load_config
from fedit.provenance import provenance
from fedit.runners.common import build_workbench
from fedit.runners.simulation import Simulation

log = logging.getLogger("bench")
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def smoke_overrides() -> dict[str, Any]:
    """tiny-random on the test fixtures (45 records as 5 iid clients, all sampled): seconds per run."""
    return {"model": "tiny-random", "precision": "fp32", "data": str(FIXTURES / "tiny"),
            "test_data": str(FIXTURES / "tiny_test.jsonl"), "partition": "iid", "num_clients": 5,
            "clients_per_round": 5, "min_client_size": 1, "local_steps": 1, "batch_size": 2,
            "micro_batch_size": 2, "max_len": 64, "lr": 1e-3}


def base_config(preset: str, smoke: bool, extra: dict[str, Any]) -> Config:
    cfg = load_config(preset)
    return cfg.override({**(smoke_overrides() if smoke else {}), **extra})


class Runs:
    """Runs that share one base model; ``run(name, overrides)`` -> the run's round records."""

    def __init__(self, base: Config, out: Path) -> None:
        self.base, self.out = base, out
        self.bench = None

    def run(self, name: str, overrides: dict[str, Any]) -> list[dict[str, Any]]:
        cfg = self.base.override(overrides)
        run_dir = self.out / "runs" / name
        if not (run_dir / "final").is_dir() or not _rounds(run_dir, cfg.federation.rounds):
            if self.bench is None:
                self.bench = build_workbench(self.base)
            log.info("run %s: %s", name, overrides or "as configured")
            Simulation(cfg, run_dir, resume=True, bench=self.bench).run()
        else:
            log.info("run %s: finished earlier, reusing %s", name, run_dir)
        return _rounds(run_dir, cfg.federation.rounds)


def _rounds(run_dir: Path, rounds: int) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs = [r for r in recs if r.get("type") == "round"]
    return recs if recs and recs[-1]["round"] == rounds else []


def final_loss(rounds: list[dict[str, Any]]) -> float:
    return rounds[-1]["eval"]["overall"]["loss"]


def machine() -> dict[str, Any]:
    """Versions, git revision and machine (fedit.provenance)."""
    return provenance()


def write(out: Path, name: str, results: dict[str, Any], table: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / f"{name}.md").write_text(table + "\n")
    print(table)
