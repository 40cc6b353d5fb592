"""Config files and the commands around them, through the CLI: ``base:`` of a partial config file,
``--help`` and the resolved config showing what runs, ``fedit config list|show|cp``, ``fedit
partition`` without the run's flags, and a closed stdout (``fedit methods | head``)."""

import json
import subprocess
import sys

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
