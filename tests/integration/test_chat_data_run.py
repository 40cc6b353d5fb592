"""Chat data end to end on tiny-random: `fedit partition` and `fedit run` with messages / ShareGPT
records split by a user field, and a Flower node reading a chat client file."""

import json
import math

from fedit.cli import main


def test_partition_and_run_on_chat_records_split_by_user(fixtures_dir, tmp_path, capsys):
    data = str(fixtures_dir / "chat_tiny.jsonl")
    assert main(["partition", "--data", data, "--partition", "by-field:user", "--out", str(tmp_path / "parts")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clients"] == [4, 4, 4]
    stats = json.loads((tmp_path / "parts" / "stats.json").read_text())
    assert stats["num_clients"] == 3 and (tmp_path / "parts" / "categories.png").is_file()
    client0 = json.loads((tmp_path / "parts" / "clients" / "client_000.json").read_text())
    assert {r["user"] for r in client0} == {"alice"} and "messages" in client0[0]

    from fedit.runners.flower.client_app import node_records   # a Flower node holding that file
    assert len(node_records({"data-path": str(tmp_path / "parts" / "clients" / "client_000.json")})) == 4

    out = tmp_path / "run"
    assert main(["run", "--model", "tiny-random", "--precision", "fp32", "--data", data, "--test-data", data,
                 "--partition", "by-field:user", "--clients-per-round", "2", "--rounds", "1", "--local-steps", "1",
                 "--batch-size", "2", "--micro-batch-size", "2", "--max-len", "160", "--logger", "none",
                 "--out", str(out)]) == 0
    rounds = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]
    assert rounds[-1]["eval"]["overall"]["examples"] == 12
    assert all(math.isfinite(r["eval"]["overall"]["loss"]) for r in rounds)
    assert sorted(r["client"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                  if r["type"] == "client") == sorted(rounds[-1]["clients"])
