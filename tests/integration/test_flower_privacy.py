"""Privacy on a real (loopback) Flower federation, tiny-random, 3 SuperNodes:

* DP-FedAvg needs no Flower-specific code: clipping runs on the nodes (run_job's client transform),
  noise on the server (the strategy wrapper); with a fixed noise seed the deployment and
  ``fedit run --partition files`` give the same adapter and the same epsilon.
* ``--secure-aggregation`` runs Flower's SecAgg+: the aggregate equals plain FedAvg within the
  quantisation bound the protocol documents, and nothing the server keeps holds a client's update.

Both start real processes (4 ClientApp processes per node and round under SecAgg+): ``slow``.
"""

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

from fedit.config import load_config  # noqa: E402
from fedit.privacy import secagg  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tiny"
FEDIT = [sys.executable, "-m", "fedit.cli"]
# fp32: parity with the simulation is exact only without bf16 autocast (on a CPU with AVX512-BF16/AMX
# "auto" trains in bf16, whose rounding differs between one process of 2 threads and 1-thread nodes)
JOB = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files",
       "--rounds", "1", "--clients-per-round", "3", "--local-steps", "3", "--batch-size", "4",
       "--micro-batch-size", "2", "--seed", "7"]
NODES = [str(p) for p in sorted(TINY.glob("client_*.json"))]


def _run(args: list[str]) -> None:
    done = subprocess.run(FEDIT + args, capture_output=True, text=True, env={**os.environ, "FEDIT_DEBUG": "1"},
                          timeout=500)
    assert done.returncode == 0, done.stderr[-4000:]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_dp_fedavg_on_flower_matches_the_simulation(tmp_path: Path) -> None:
    dp = ["--dp-clip", "0.02", "--dp-noise-multiplier", "0.8", "--dp-noise-seed", "5"]
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    _run(["run", "--data", str(TINY), "--out", str(sim), *JOB, *dp])
    _run(["deploy", "local", "--node-data", *NODES, "--out", str(dep), *JOB, *dp])
    a, b = _adapter(sim), _adapter(dep)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    last = [r for r in _records(dep) if r["type"] == "round"][-1]
    sim_last = [r for r in _records(sim) if r["type"] == "round"][-1]
    assert last["dp_epsilon"] == sim_last["dp_epsilon"] and last["dp_clipped_fraction"] == 1.0


@pytest.mark.slow
def test_secure_aggregation_on_flower_is_fedavg_within_the_quantisation_bound(tmp_path: Path) -> None:
    plain, dep = tmp_path / "plain", tmp_path / "secure"
    _run(["run", "--data", str(TINY), "--out", str(plain), *JOB])
    _run(["deploy", "local", "--node-data", *NODES, "--out", str(dep), "--secure-aggregation", *JOB])

    cfg = load_config("cpu-demo").override({"secure_aggregation": True})
    bound = secagg.error_bound([15, 15, 15], secagg.round_params(cfg, 3, [15, 15, 15]))
    a, b = _adapter(plain), _adapter(dep)
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < worst <= bound + 1e-6, (worst, bound)          # + the simulation/Flower parity tolerance

    records = _records(dep)
    last = [r for r in records if r["type"] == "round"][-1]
    assert last["clients"] == [0, 1, 2] and last["dropped"] == []
    assert last["secagg_round_trips"] == 4 and last["secagg_messages"] == 24
    assert last["secagg_bytes_up"] > 3 * 8 * sum(v.numel() for v in a.values())
    assert "lora_gap_mean" not in last                          # B and A of one client are never seen
    for r in records:                                           # the log: scalars only
        assert all(not isinstance(v, (list, dict)) or k in ("clients", "dropped", "eval", "metrics")
                   for k, v in r.items())
        assert all(not isinstance(v, (list, dict)) for v in r.get("metrics", {}).values())  # a node's scalars
    state = torch.load(dep / "checkpoints" / "round_0001" / "state.pt", weights_only=True)
    assert state["extra"] == {"transport": {}}                  # no client state kept on the server

    def tensors(obj) -> int:
        if isinstance(obj, torch.Tensor):
            return 1
        if isinstance(obj, dict):
            return sum(tensors(v) for v in obj.values())
        return sum(tensors(v) for v in obj) if isinstance(obj, (list, tuple)) else 0

    assert tensors(state) == 0                                  # the strategy keeps no adapter either
