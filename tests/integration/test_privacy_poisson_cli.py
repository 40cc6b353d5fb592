"""`fedit run` with Poisson client sampling and adaptive clipping on tiny-random: a round that samples
nobody still releases DP-FedAvg's noise (and is counted), the clip moves every round, and the model
card and metrics say which accounting gave epsilon."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedit.cli import main

pytest.importorskip("dp_accounting")


def run_args(fixtures_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "1",
            "--local-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--max-len", "64", "--out", str(out), *extra]


def rounds(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


def test_poisson_dp_auto_clip_run_copes_with_empty_rounds_and_records_its_accounting(fixtures_dir, tmp_path):
    out = tmp_path / "run"
    assert main(run_args(fixtures_dir, out, "--rounds", "4", "--client-sampling", "poisson", "--dp-clip", "auto",
                         "--dp-noise-multiplier", "1.0", "--dp-accountant", "rdp", "--dp-clip-count-noise", "2", "--dp-noise-seed", "5")) == 0
    recs = rounds(out)[1:]
    assert [len(r["clients"]) for r in recs] == [0, 1, 0, 1]        # q = 1/3 of 3 clients, seeded by --dp-noise-seed
    empty = recs[0]
    assert empty["no_client_sampled"] is True and empty["num_examples"] == 0 and empty["eval"]["overall"]
    assert [r["dp_releases"] for r in recs] == [1, 2, 3, 4]          # the empty round released noise: counted
    assert [r["dp_denominator"] for r in recs] == [1, 1, 1, 1]      # the expected cohort, never the drawn one
    clips = [r["dp_clip"] for r in recs]
    assert clips[0] == 0.1 and len(set(clips)) == 4                 # adaptive: a new clip every round
    assert all(r["dp_clip_next"] == pytest.approx(n) for r, n in zip(recs, clips[1:]))
    how = "RDP accountant (dp-accounting), Poisson sampling, add/remove neighbours, with the adaptive clip's noised count"
    assert recs[-1]["dp_accounting"] == how
    card = (out / "final" / "README.md").read_text()
    assert f"after 4 releases, noise multiplier 1, clip {clips[-1]:.4g}; {how}" in card


def test_poisson_sampling_with_secure_aggregation_is_refused_in_one_line(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(fixtures_dir, out, "--client-sampling", "poisson", "--secure-aggregation")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedit run: error: --client-sampling poisson: secure aggregation sets up its shares"), err
    assert not out.exists()
