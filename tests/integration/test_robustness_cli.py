"""`fedit run` on tiny-random with each defence, attack and codec: one fast run per mechanism."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main


def run(fixtures: Path, out: Path, *extra: str, rounds: int = 1) -> tuple[list[dict], list[dict]]:
    args = ["-q", "run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures / "tiny"),
            "--test-data", str(fixtures / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "3",
            "--local-steps", "1", "--batch-size", "2", "--micro-batch-size", "2", "--max-len", "64",
            "--lr", "1e-3", "--rounds", str(rounds), "--out", str(out), *extra]
    assert main(args) == 0
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["type"] == "round"], [r for r in recs if r["type"] == "client"]


@pytest.mark.parametrize("flags, check", [
    (["--robust", "median", "--attack", "scale", "--attack-scale", "1000"], lambda r: "lora_gap_mean" in r),
    (["--robust", "trimmed-mean", "--trim-ratio", "0.34", "--attack", "sign-flip"],
     lambda r: r["robust_trimmed"] == 1),
    (["--robust", "krum", "--krum-f", "0", "--attack", "noise", "--attack-noise-std", "1"],
     lambda r: len(r["robust_rejected"]) == 2 and len(r["clients"]) == 1),
    (["--robust", "multi-krum", "--krum-f", "0", "--attack", "poison-responses"],
     lambda r: r["robust_rejected"] == [] and len(r["clients"]) == 3),
    (["--robust", "norm-bound", "--attack", "scale", "--attack-scale", "1000"], lambda r: r["norm_bound"] > 0),
])
def test_defences_against_attacks(tmp_path, fixtures_dir, flags, check):
    rounds, clients = run(fixtures_dir, tmp_path / "out", *flags)
    defence, attack_name = flags[1], flags[flags.index("--attack") + 1]
    attack = json.loads((tmp_path / "out" / "attack.json").read_text())
    assert attack["attack"] == attack_name and len(attack["attackers"]) == 1
    assert check(rounds[1]) and rounds[1]["eval"]["overall"]["loss"] < 20
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert f"robust: {defence}" in saved and f"attack: {attack_name}" in saved
    if attack_name == "scale":  # the attacker's update norm stands out in its client record
        norms = {c["client"]: c["update_norm"] for c in clients}
        bad = attack["attackers"][0]
        assert norms[bad] > 100 * max(n for c, n in norms.items() if c != bad)
        if defence == "norm-bound":
            assert rounds[1]["robust_clipped"] == [bad]


def test_backdoor_reports_the_trigger_success_rate(tmp_path, fixtures_dir):
    rounds, _ = run(fixtures_dir, tmp_path / "out", "--attack", "backdoor", "--attack-eval-prompts", "3")
    for rnd in rounds:  # round 0 too: the rate before any poisoning
        assert rnd["eval"]["backdoor"]["prompts"] == 3 and 0 <= rnd["eval"]["backdoor"]["trigger_success"] <= 1


def test_int8_updates_cost_fewer_bytes(tmp_path, fixtures_dir):
    rounds, clients = run(fixtures_dir, tmp_path / "out", "--compress", "int8")
    # every job carries the float32 adapter down, every reply its int8 code; tiny-random's tensors
    # (~600 entries) are small enough for Flower's per-array headers (~450 bytes) to matter
    assert rounds[1]["bytes_down"] > 1.6 * rounds[1]["bytes_up"] and len(clients) == 3
    assert "compress: int8" in (tmp_path / "out" / "config.yaml").read_text()


def test_topk_resume_is_bit_identical(tmp_path, fixtures_dir, crash_after_round):
    """Top-k's error feedback lives in the clients' state, checkpointed with every round; and
    top-k replies are much smaller than the adapter sent down."""
    full = tmp_path / "full"
    rounds, _ = run(fixtures_dir, full, "--compress", "topk:0.1", "--clients-per-round", "2", rounds=3)
    # tiny-random's ~600-entry tensors: Flower's per-array headers (~450 bytes) keep this near 2x
    assert all(r["bytes_down"] > 1.6 * r["bytes_up"] for r in rounds[1:])
    out = tmp_path / "crashed"
    with crash_after_round(3), pytest.raises(AssertionError):   # round 3's error feedback changed, unsaved
        run(fixtures_dir, out, "--compress", "topk:0.1", "--clients-per-round", "2", rounds=3)
    assert main(["-q", "run", "--out", str(out), "--resume"]) == 0
    a, b = (load_file(str(p / "final" / "adapter_model.safetensors")) for p in (full, out))
    assert all(torch.equal(a[k], b[k]) for k in a)
