"""dual personalization on a real (loopback) Flower federation, tiny-random, 3 SuperNodes: the local
adapter's tensors never appear in a message. Every reply is checked against its job's keys by the
server (an extra key drops the update), the bytes up equal plain FedAvg's (as Flower serializes them),
and no tensor of a node's local adapter is anywhere in what the server wrote. Starts real processes: slow."""

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
JOB = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(FIXTURES / "tiny_test.jsonl"),
       "--partition", "files", "--rounds", "2", "--clients-per-round", "3", "--local-steps", "2",
       "--batch-size", "4", "--micro-batch-size", "2", "--seed", "7", "--logger", "none"]
NODES = [str(p) for p in sorted(TINY.glob("client_*.json"))]


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "fedit.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "FEDIT_DEBUG": "1"}, timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]


def _rounds(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


@pytest.mark.slow
def test_dual_local_adapter_never_appears_in_a_flower_message(tmp_path: Path) -> None:
    plain, dep, work = tmp_path / "plain", tmp_path / "dep", tmp_path / "work"
    _run(["run", "--data", str(TINY), "--out", str(plain), *JOB])
    _run(["deploy", "local", "--node-data", *NODES, "--out", str(dep), "--work-dir", str(work),
          "--personalization", "dual", *JOB])
    for p, d in zip(_rounds(plain)[1:], _rounds(dep)[1:]):
        assert d["dropped"] == [] and d["clients"] == [0, 1, 2]
        assert d["bytes_up"] == p["bytes_up"]                        # exactly FedAvg's replies
    server = [t for f in dep.rglob("*.safetensors") for t in load_file(str(f)).values()]
    server += [t for f in dep.rglob("state.pt") for t in _tensors(torch.load(f, weights_only=True))]
    for index in range(3):
        folder = work / "nodes" / f"supernode-{index}" / "personal" / f"client_{index:03d}"
        pair = load_file(str(folder / "adapter_model.safetensors"))     # the node's own folder: rank 2r
        assert json.loads((folder / "adapter_config.json").read_text())["r"] == 16
        local = [v[:, 8:] if ".lora_B." in k else v[8:] for k, v in pair.items()]
        assert any(t.abs().sum() > 0 for t in local)
        assert not any(t.shape == s.shape and torch.equal(t, s) for t in local for s in server)


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    return [t for v in obj for t in _tensors(v)] if isinstance(obj, (list, tuple)) else []
