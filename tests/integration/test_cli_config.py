"""Config files and the commands around them, through the CLI: ``base:`` of a partial config file,
``--help`` and the resolved config showing what runs, ``fedit config list|show|cp``, ``fedit
partition`` without the run's flags, and a closed stdout (``fedit methods | head``)."""

import json
import subprocess
import sys
from pathlib import Path

from fedit.cli import main


def test_partition_ignores_the_run_flags_it_does_not_have(tmp_path, fixtures_dir, capsys):
    # cpu-demo samples 3 clients a round; partition has no --clients-per-round and must not check it
    out = tmp_path / "parts"
    assert main(["partition", "--data", str(fixtures_dir / "tiny"), "--partition", "iid", "--num-clients", "2",
                 "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(out), "clients": [23, 22]}
    assert sorted(p.name for p in (out / "clients").iterdir()) == ["client_000.json", "client_001.json"]


def test_a_closed_stdout_ends_quietly():
    """`fedit methods | head`: the reader went away; no error line, no traceback, exit 141 like
    a tool killed by SIGPIPE."""
    proc = subprocess.Popen([sys.executable, "-m", "fedit.cli", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()                     # closed before fedit writes: every write fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def help_text(capsys, *argv):
    assert main(list(argv)) == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_defaults_of_the_config_given(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                 # short paths: --help wraps a long one
    mine = Path("my.yaml")
    mine.write_text("federation: {rounds: 7}\n")
    text = help_text(capsys, "run", "--config", str(mine), "--help")
    assert f"federated rounds (default: 7, from {mine})" in text
    assert "AdamW learning rate of the local training (default: 0.0003, from preset cpu-demo)" in text
    assert "number of clients (ignored by --partition files and by-field:FIELD) (default: 10, from preset cpu-demo)" in text
    paper = Path("paper.yaml")
    paper.write_text("base: paper\ntrain: {lr: 1.0e-4}\n")
    text = help_text(capsys, "run", "--help", f"--config={paper}")     # --config after --help counts too
    assert f"(default: 0.0001, from {paper})" in text and "federated rounds (default: 20, from preset paper)" in text
    text = help_text(capsys, "experiment", "--config", str(mine), "--help")   # experiment builds on cpu-small
    assert "(default: 64, from preset cpu-small)" in text and f"(default: 7, from {mine})" in text
    mine.write_text("train: {lr: -1}\n")
    assert main(["run", "--config", str(mine), "--help"]) == 2
    assert capsys.readouterr().err == f"fedit run: error: {mine} on preset cpu-demo: --lr: must be positive, got -1.0\n"
