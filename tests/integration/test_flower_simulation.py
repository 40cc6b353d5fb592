"""fedit's Flower app under Flower's Simulation Engine (Ray backend, virtual SuperNodes): the same
final adapter as ``fedit run``, every process stopped afterwards. Starting Ray and a ClientApp
actor per virtual node takes ~30 s on 2 CPU cores: ``slow``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("flwr")
pytest.importorskip("ray")

from fedit.runners.flower.processes import alive  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
JOB = ["--model", "tiny-random", "--precision", "fp32", "--data", str(FIXTURES / "tiny"),
       "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--rounds", "2",
       "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2",
       "--max-len", "128", "--seed", "7"]


def _fedit(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fedit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "FEDIT_DEBUG": "1"}, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.mark.slow
def test_simulation_engine_matches_fedit_run(tmp_path: Path) -> None:
    """`fedit deploy simulate` (flwr run on a --simulation SuperLink, 3 virtual nodes, 1 CPU each):
    node i trains client i of the run's partition, so the adapter is fedit run's (float rounding:
    fedit run trains the round's clients together, the ClientApps one each)."""
    sim, eng = tmp_path / "sim", tmp_path / "engine"
    _fedit(["run", "--out", str(sim), *JOB])
    done = _fedit(["deploy", "simulate", "--num-supernodes", "3", "--client-cpus", "1", "--out", str(eng), *JOB])
    assert json.loads(done.stdout.strip().splitlines()[-1])["run_dir"] == str(eng)
    a = load_file(str(sim / "final" / "adapter_model.safetensors"))
    b = load_file(str(eng / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-5, atol=1e-6), key
    rounds = [json.loads(x) for x in (eng / "metrics.jsonl").read_text().splitlines()]
    sim_rounds = [json.loads(x) for x in (sim / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in rounds if r["type"] == "round" and r["round"]] == \
        [r["clients"] for r in sim_rounds if r["type"] == "round" and r["round"]]
    record = json.loads((tmp_path / "engine.flower" / "pids.json").read_text())
    assert record["pids"] and alive(record["pids"]) == []
