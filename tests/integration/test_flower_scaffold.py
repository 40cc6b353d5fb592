"""SCAFFOLD on a real (loopback) Flower federation: each node's control variate lives in its
``context.state`` and survives the per-message ClientApp processes, so `fedit deploy local` gives
the adapter of `fedit run --partition files` (3 nodes, 2 per round for 2 rounds: at least one
client trains twice, with the variate it stored in round 1)."""

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

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny"
FEDIT = [sys.executable, "-m", "fedit.cli"]
# fp32: parity with the simulation is exact only without bf16 autocast (on a CPU with AVX512-BF16/AMX
# "auto" trains in bf16, whose rounding differs between one process of 2 threads and 1-thread nodes)
JOB = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files",
       "--rounds", "2", "--local-steps", "3", "--batch-size", "4", "--micro-batch-size", "2", "--seed", "7",
       "--lr", "1e-3", "--strategy", "scaffold", "--clients-per-round", "2"]


def _run(args: list[str]) -> None:
    env = {**os.environ, "FEDIT_DEBUG": "1"}
    done = subprocess.run(FEDIT + args, capture_output=True, text=True, env=env, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]


def _rounds(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


@pytest.mark.slow
def test_scaffold_deploy_local_matches_simulation(tmp_path: Path) -> None:
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    _run(["run", "--data", str(TINY), "--out", str(sim), *JOB])
    nodes = [str(p) for p in sorted(TINY.glob("client_*.json"))]
    _run(["deploy", "local", "--node-data", *nodes, "--out", str(dep), *JOB])

    a = load_file(str(sim / "final" / "adapter_model.safetensors"))
    b = load_file(str(dep / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    sim_rounds, dep_rounds = _rounds(sim)[1:], _rounds(dep)[1:]     # after round 0's evaluation
    assert [r["clients"] for r in dep_rounds] == [r["clients"] for r in sim_rounds]
    first, second = (r["clients"] for r in sim_rounds)
    assert set(first) & set(second), "no client trained twice: the node state was not exercised"
    for s, d in zip(sim_rounds, dep_rounds):
        assert d["scaffold_c_norm"] == pytest.approx(s["scaffold_c_norm"], rel=1e-5) and s["scaffold_c_norm"] > 0
        assert d["eval"]["overall"]["loss"] == pytest.approx(s["eval"]["overall"]["loss"], abs=1e-5)
