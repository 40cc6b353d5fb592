"""Config files and the commands around them, through the CLI: ``base:`` of a partial config file,
``--help`` and the resolved config showing what runs, ``fedit config list|show|cp``, ``fedit
partition`` without the run's flags, and a closed stdout (``fedit methods | head``)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from fedit.cli import main
from fedit.config import load_config


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


def test_config_list_names_every_preset_and_who_uses_it(capsys):
    assert main(["config", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line for line in lines if not line.startswith(" ")] == ["cpu-demo", "cpu-small", "paper"]
    text = " ".join(" ".join(lines).split())
    assert "cpu-demo the default preset. SmolLM2-135M-Instruct," in text
    assert "Default of fedit run, partition, deploy." in text and "Default of fedit experiment." in text


def test_config_show_is_the_resolved_config_with_flags_a_dry_run(tmp_path, capsys):
    mine = tmp_path / "my.yaml"
    mine.write_text("federation: {rounds: 7}\n")
    assert main(["config", "show", str(mine), "--lr", "2e-4", "--set", "data.num_clients=5",
                 "--set", "train.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# fedit config show: {mine} on preset cpu-demo, flags --num-clients --lr\n")
    shown = yaml.safe_load(out)
    expected = load_config("cpu-demo").override({"rounds": 7, "num_clients": 5, "lr": 2e-4})
    assert shown == expected.to_dict()                      # the flag given by name wins over --set
    again = tmp_path / "shown.yaml"
    again.write_text(out)
    assert load_config(str(again), "cpu-small") == expected  # every key set: no base can change it
    assert not list(tmp_path.glob("runs*"))
    assert main(["config", "show", "paper", "--set", "train.lrr=1"]) == 2
    assert capsys.readouterr().err == ("fedit config: error: --set: unknown key 'train.lrr' (the keys are a config "
                                       "file's, e.g. train.lr)\n")
    assert main(["config", "show", "--clients-per-round", "11"]) == 2
    assert capsys.readouterr().err == ("fedit config: error: --clients-per-round: 11 is more than the 10 clients "
                                       "(--num-clients)\n")


def test_config_cp_copies_a_preset_and_never_overwrites_unasked(tmp_path, capsys):
    copy = tmp_path / "mine.yaml"
    assert main(["config", "cp", "paper", str(copy)]) == 0
    # it keeps the preset's comments and says what it builds on, so it is the paper's setup even
    # under a command that builds files on cpu-demo (cpu-demo's local_steps must not leak in)
    text = copy.read_text()
    assert text.startswith("# paper: the setup of") and "\nbase: paper\n" in text
    assert load_config(str(copy), "cpu-demo") == load_config("paper")
    copy.write_text(text.replace("rounds: 20", "rounds: 2"))
    assert main(["config", "cp", "cpu-demo", str(copy)]) == 2
    assert capsys.readouterr().err == f"fedit config: error: {copy}: exists; pass --force to overwrite it\n"
    assert load_config(str(copy)).federation.rounds == 2     # untouched
    assert main(["config", "cp", "cpu-demo", str(copy), "--force"]) == 0
    assert load_config(str(copy)) == load_config("cpu-demo")
    assert main(["config", "cp", "nope", str(tmp_path / "x.yaml")]) == 2
    assert capsys.readouterr().err.endswith("error: NAME: 'nope' is not a preset (cpu-demo, cpu-small, "
                                            "paper); to copy a file, use cp\n")
    assert main(["config", "cp", "paper", str(tmp_path / "no" / "x.yaml")]) == 2
    assert capsys.readouterr().err.endswith(f"error: {tmp_path / 'no' / 'x.yaml'}: no such folder {tmp_path / 'no'}\n")
