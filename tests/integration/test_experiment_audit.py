"""`fedit experiment --audit`: the federated run is audited and the report gets a privacy section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedit.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
pytest.importorskip("scipy")


def test_experiment_audit_adds_a_report_section(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["-q", "experiment", "--model", "tiny-random", "--data", str(FIXTURES / "tiny"), "--test-data",
                 str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--rounds", "1", "--clients-per-round",
                 "2", "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--max-len", "64",
                 "--systems", "fedit", "--local-baselines", "0", "--gen-records", "2", "--max-new-tokens", "2",
                 "--audit", "--audit-canaries", "2", "--audit-records", "4", "--audit-references", "3",
                 "--out", str(out)]) == 0
    audit = json.loads((out / "systems" / "fedit" / "audit.json").read_text())
    assert audit["update_attack"]["seen"] == "plain" and len(audit["canaries"]["exposure"]) == 2
    md = (out / "report.md").read_text()
    assert "## Privacy audit (fedit audit)" in md
    row = next(line for line in md.splitlines() if line.startswith("| systems/fedit | plain |"))
    assert row.endswith(f"| none (no DP) | {audit['canaries']['epsilon_lower_bound']:.3g} | "
                        f"{audit['canaries']['exposure_mean']:.2f} of 2.00 |")
    assert "<h2>Privacy audit (fedit audit)</h2>" in (out / "report.html").read_text()
    assert json.loads((out / "results.json").read_text())["audit"]["systems/fedit"]["seed"] == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["audit"]["systems/fedit"][0].startswith("update attack on client ")
