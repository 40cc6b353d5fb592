"""`fedit experiment --personalization fedsa --client-test-fraction 0.2` on tiny-random: the per-client
entries of results.json, the per-client table and plot (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fedit.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_per_client_entries_table_and_plot(tmp_path):
    out = tmp_path / "exp"
    assert main(["-q", "experiment", "--model", "tiny-random", "--data", str(FIXTURES / "tiny"),
                 "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--rounds", "2",
                 "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2",
                 "--local-baselines", "1", "--systems", "fedit", "--gen-records", "1", "--max-new-tokens", "2",
                 "--personalization", "fedsa", "--client-test-fraction", "0.2", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    entries = results["per_client"]
    assert [e["client"] for e in entries] == [0, 1, 2] and all(e["records"] == 3 for e in entries)
    for e in entries:
        assert {"local", "global", "personalized", "global_vs_local", "personalized_vs_local", "verdict"} <= set(e)
        assert e["verdict"] in ("joining helped", "joining hurt", "no evidence")
        assert e["global_vs_local"]["estimate"] == pytest.approx(e["global"] - e["local"], abs=1e-9)
    rounds = [json.loads(line) for line in (out / "systems/fedit/metrics.jsonl").read_text().splitlines()
              if json.loads(line).get("type") == "round"]
    sampled = {c for r in rounds for c in r.get("clients", [])}
    for e in entries:   # fedsa: a client never sampled has the global model; a sampled one its own B
        assert (e["personalized"] == e["global"]) == (e["client"] not in sampled)
    summary = results["per_client_summary"]
    assert summary["clients"] == 3 and sum(summary["verdicts"].values()) == 3
    report = (out / "report.md").read_text()
    assert "## Per client: its own held-out records" in report and "| 2 | 3 |" in report
    assert Image.open(out / "per_client.png").size[0] > 100
