"""`fedit run --audit-canaries` then `fedit audit` on tiny-random: audit.json's fields and ranges, the
recorded choices, the printed summary, and the one-line refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from fedit.cli import main

pytest.importorskip("scipy")


def test_audit_of_a_run_with_canaries_writes_audit_json_and_refuses_bad_requests(fixtures_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
                 "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files",
                 "--clients-per-round", "2", "--rounds", "1", "--local-steps", "2", "--batch-size", "4",
                 "--micro-batch-size", "4", "--max-len", "64", "--audit-canaries", "3", "--audit-repeats", "2",
                 "--out", str(out)]) == 0
    record = json.loads((out / "canaries.json").read_text())
    assert record["count"] == 3 and record["repeats"] == 2 and len(record["canaries"]) == 6
    assert sum(c["inserted"] for c in record["canaries"]) == 3
    assert all(0 <= c["client"] <= 2 for c in record["canaries"] if c["inserted"])
    capsys.readouterr()

    assert main(["audit", "--run", str(out), "--audit-records", "4", "--audit-references", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("update attack on client ") and "empirical epsilon >= " in printed
    audit = json.loads((out / "audit.json").read_text())
    upd = audit["update_attack"]
    assert audit["seed"] == 0 and upd["seen"] == "plain" and upd["members"] == 4 and upd["non_members"] == 4
    assert 0 <= upd["views"]["plain"]["auc"] <= 1 and 0 <= upd["views"]["plain"]["tpr_at_1pct_fpr"] <= 1
    can = audit["canaries"]
    assert len(can["exposure"]) == 3 and all(0 <= e <= 2 for e in can["exposure"]) and can["max_exposure"] == 2
    assert can["epsilon_lower_bound"] >= 0 and can["delta"] == 1e-5 and can["confidence"] == 0.95
    # the summary figures are those of the canaries listed (not only in range)
    rows = can["per_canary"]
    assert [r["name"] for r in rows if r["inserted"]] == [c["name"] for c in record["canaries"] if c["inserted"]]
    assert can["exposure"] == [r["exposure"] for r in rows if r["inserted"]]
    assert can["exposure_mean"] == pytest.approx(sum(can["exposure"]) / 3)
    ranks = [2 - math.log2(k) for k in (1, 2, 3, 4)]             # exposure = log2(R + 1) - log2(rank), R = 3
    assert all(any(r["exposure"] == pytest.approx(e) for e in ranks) for r in rows)
    assert audit["accountant"]["epsilon"] is None                  # no DP in this run

    assert main(["audit", "--run", str(out), "--audit-canaries", "4"]) == 2
    assert capsys.readouterr().err.strip() == ("fedit audit: error: --audit-canaries: 4 is more than the 3 "
                                               "canaries the run inserted")
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / "canaries.json").unlink()
    assert main(["audit", "--run", str(plain), "--audit-canaries", "2"]) == 2
    assert capsys.readouterr().err.strip() == (f"fedit audit: error: --audit-canaries: the run {plain} inserted no "
                                               "canaries (run it with --audit-canaries K to audit the released "
                                               "adapter with them)")
    assert main(["audit", "--run", str(plain), "--audit-confidence", "1.5"]) == 2
    assert capsys.readouterr().err.strip() == "fedit audit: error: --audit-confidence: must be in (0, 1), got 1.5"
    assert main(["run", "--out", str(tmp_path / "x"), "--audit-repeats", "0"]) == 2
    assert "--audit-repeats: must be at least 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_deploy_refuses_canaries_before_starting_anything(fixtures_dir, tmp_path, capsys):
    code = main(["deploy", "local", "--node-data", str(fixtures_dir / "tiny" / "client_0.json"), "--out",
                 str(tmp_path / "run"), "--model", "tiny-random", "--clients-per-round", "1", "--audit-canaries", "2"])
    assert code == 2 and not (tmp_path / "run").exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "fedit deploy: error: --audit-canaries: canaries are inserted by `fedit run` only; a Flower node's data is "
        "its own")


def test_audit_refuses_a_run_whose_clients_keep_part_of_the_model(fixtures_dir, tmp_path, capsys):
    """Under fedsa the audit scored the trained A with the initial (zero) B: AUC exactly 0.5, 'no leakage'."""
    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
                 "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files",
                 "--clients-per-round", "2", "--rounds", "1", "--local-steps", "1", "--batch-size", "4",
                 "--micro-batch-size", "4", "--max-len", "64", "--personalization", "fedsa", "--logger", "none",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["audit", "--run", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fedit audit: error: --run {out}: trained with --personalization fedsa, whose clients keep part of the "
        "model; the audit scores the shared adapter alone and would measure nothing: not supported")
    assert not (out / "audit.json").exists()
