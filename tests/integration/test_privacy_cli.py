"""`fedit run` with client-level DP on tiny-random: epsilon in every round record and summary line,
--resume bit-identical (fixed noise seed), a budget that refuses `--resume --rounds` beyond it, and
a secret noise seed that stays out of everything a run releases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main

pytest.importorskip("dp_accounting")

# z = 1.5 with 2 of 3 clients per round: epsilon 9.6 after 2 rounds, 12.2 after 3 (delta 1e-5)
DP = ["--dp-clip", "0.05", "--dp-noise-multiplier", "1.5", "--dp-target-epsilon", "10"]


def run_args(fixtures_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "2",
            "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--max-len", "128",
            "--out", str(out), *extra]


def rounds(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


@pytest.mark.slow
def test_dp_run_records_epsilon_resumes_identically_and_keeps_its_budget(fixtures_dir, tmp_path, crash_after_round,
                                                                          capsys):
    full, crashed = tmp_path / "full", tmp_path / "crashed"
    assert main(run_args(fixtures_dir, full, "--rounds", "2", "--dp-noise-seed", "11", *DP)) == 0
    recs = rounds(full)
    assert [r["round"] for r in recs] == [0, 1, 2]
    assert [r["dp_releases"] for r in recs[1:]] == [1, 2]
    assert recs[1]["dp_epsilon"] < recs[2]["dp_epsilon"] <= 10 and recs[2]["dp_epsilon"] == pytest.approx(9.6, abs=0.05)
    assert "| DP epsilon 9.6 (delta 1e-05) |" in capsys.readouterr().err            # the round summary line

    with crash_after_round(2):
        assert main(run_args(fixtures_dir, crashed, "--rounds", "2", "--dp-noise-seed", "11", *DP)) == 130
    assert main(["run", "--out", str(crashed), "--resume"]) == 0
    a = load_file(str(full / "final" / "adapter_model.safetensors"))
    b = load_file(str(crashed / "final" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["dp_epsilon"] for r in rounds(crashed)[1:]] == [r["dp_epsilon"] for r in recs[1:]]

    before = {p: p.read_bytes() for p in (full / "metrics.jsonl", full / "config.yaml")}
    assert main(["run", "--out", str(full), "--resume", "--rounds", "3"]) == 2   # epsilon 12.2 > budget 10
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == ("fedit run: error: --rounds 3: at --dp-noise-multiplier 1.5 that many rounds reach epsilon 12.2, "
                   "beyond the budget --dp-target-epsilon 10.0 (--dp-delta 1e-05); nothing was run"), err
    assert all(p.read_bytes() == data for p, data in before.items())        # the run is left as it was
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["round_0001", "round_0002"]


def test_secret_noise_seed_stays_in_the_checkpoints(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "secret"
    assert main(run_args(fixtures_dir, out, "--rounds", "1", "--dp-clip", "0.05", "--dp-noise-multiplier", "1.0")) == 0
    state = torch.load(out / "checkpoints" / "round_0001" / "state.pt", weights_only=True)
    seed = str(state["strategy"]["dp"]["seed"])
    released = [out / "config.yaml", out / "metrics.jsonl", *sorted((out / "final").iterdir())]
    assert all(seed not in p.read_bytes().decode("latin-1") for p in released)
    assert "dp_noise_seed: null" in (out / "config.yaml").read_text()
    assert seed not in capsys.readouterr().out
