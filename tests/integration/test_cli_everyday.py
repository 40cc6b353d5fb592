"""Everyday correctness of `fedit run`, `eval` and `generate` (issue 7), through the CLI on tiny-random:
what a run directory holds, what --resume accepts, and what a user is told when something fails."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_cli_run import cli, final_state, run_args  # noqa: F401  (cli is a fixture)

from fedit.cli import main
from fedit.runners import checkpoint as checkpoint_mod


def strict_json(line: str):
    def refuse(name):
        raise ValueError(f"bare {name} in metrics.jsonl")
    return json.loads(line, parse_constant=refuse)


def metrics(out: Path) -> list[dict]:
    return [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run3(tmp_path_factory, fixtures_dir):
    """A finished 3-round run (checkpoints of rounds 2 and 3 kept), and its stderr."""
    out = tmp_path_factory.mktemp("everyday") / "run"
    res = subprocess.run([sys.executable, "-m", "fedit.cli", *run_args(fixtures_dir, out, "--rounds", "3")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res.stderr


# --- 1/6: what a run tells the user -------------------------------------------------------------

def test_resolved_config_is_logged_short_and_the_run_ends_with_a_summary(run3, fixtures_dir):
    out, stderr = run3
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith(  # what the config is made of (issue 19.1)
        "resolved config (preset cpu-demo, flags --model --precision --data --test-data --partition "
        "--clients-per-round --local-steps --batch-size --micro-batch-size --max-len --rounds):"))
    block = []
    for line in lines[start + 1:]:
        if line[:2].isdigit() and line[2:3] == ":":   # the next log line
            break
        block.append(line)
    assert [line.split(":")[0] for line in block if not line.startswith(" ")][:5] == \
        ["model", "lora", "data", "train", "federation"]
    # short lines, the fixture paths aside (a clone's folder can be long)
    assert max(len(line.replace(str(fixtures_dir), "F")) for line in block) <= 120, block
    assert '{"model": {' not in stderr
    assert "resolved config" in stderr and "lora: {lora_r: 8" in stderr
    rounds = [r for r in metrics(out) if r["type"] == "round"]
    first, last = rounds[0]["eval"]["overall"]["loss"], rounds[-1]["eval"]["overall"]["loss"]
    assert f"held-out loss {first:.4f} (round 0) -> {last:.4f} (round 3)" in stderr
    assert f"adapter: {out / 'final'}" in stderr
    assert "run finished: 3 rounds in " in stderr


# --- 7/8/10/11: the files a user gets -------------------------------------------------------------

def test_final_has_tokenizer_chat_template_and_model_card(run3):
    from transformers import AutoTokenizer

    out, _ = run3
    tok = AutoTokenizer.from_pretrained(out / "final")
    assert tok.chat_template and tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    card = (out / "final" / "README.md").read_text()
    last = [r for r in metrics(out) if r["type"] == "round"][-1]["eval"]["overall"]["loss"]
    assert card.startswith("---\nlibrary_name: peft") and "not on the Hugging Face hub" in card   # tiny-random
    assert "fedavg" in card and "3 rounds" in card and f"{last:.4f}" in card


def test_every_checkpoint_is_a_peft_adapter(run3):
    out, _ = run3
    code = ("import sys, torch; from peft import AutoPeftModelForCausalLM, get_peft_model_state_dict; "
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); "
            "print(len(get_peft_model_state_dict(m)))")
    for ckpt in sorted((out / "checkpoints").iterdir()):
        assert {"adapter_config.json", "adapter_model.safetensors", "state.pt"} <= {p.name for p in ckpt.iterdir()}
        res = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-2000:]
    last = out / "checkpoints" / "round_0003" / "adapter_model.safetensors"
    a, b = final_state(out), checkpoint_mod.load_file(str(last))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_records_provenance_and_model_origin(run3):
    out, _ = run3
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["fedit"] and {"torch", "transformers", "peft"} <= set(prov["libraries"])
    assert prov["model"]["name"] == "tiny-random" and Path(prov["model"]["path"]).is_dir()
    text = (out / "config.yaml").read_text()
    assert text.startswith("# fedit ") and yaml.safe_load(text)["federation"]["rounds"] == 3


def test_metrics_lines_are_strict_json_with_a_timestamp(run3, tmp_path):
    from datetime import datetime

    out, _ = run3
    records = metrics(out)
    assert all(datetime.fromisoformat(r["time"].replace("Z", "+00:00")).tzinfo for r in records)
    log = checkpoint_mod.MetricsLog(tmp_path / "m.jsonl")
    log.write({"type": "client", "train_loss": float("nan"), "eval": {"overall": {"loss": float("inf")}}})
    rec = strict_json((tmp_path / "m.jsonl").read_text())
    assert rec["train_loss"] is None and rec["eval"]["overall"]["loss"] is None
    assert rec["nonfinite"] == ["train_loss", "eval.overall.loss"]


# --- 2: eval and generate of a run -----------------------------------------------------------------

def test_eval_of_a_run_gives_exactly_the_loss_it_logged(run3, capsys):
    out, _ = run3
    assert main(["-q", "eval", "--run", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = [r for r in metrics(out) if r["type"] == "round"][-1]["eval"]["overall"]
    assert result["overall"]["loss"] == logged["loss"] and result["overall"]["examples"] == logged["examples"]
    assert result["adapter"] == str(out / "final")
    # a mid-run checkpoint is an adapter too
    assert main(["-q", "eval", "--run", str(out), "--adapter", str(out / "checkpoints" / "round_0002")]) == 0
    mid = json.loads(capsys.readouterr().out)
    assert mid["overall"]["loss"] == [r for r in metrics(out) if r["type"] == "round"][2]["eval"]["overall"]["loss"]


def test_adapter_alone_implies_its_base_model(run3, capsys, fixtures_dir):
    out, _ = run3
    args = ["-q", "eval", "--adapter", str(out / "final"), "--test-data", str(fixtures_dir / "tiny_test.jsonl"),
            "--precision", "fp32", "--max-len", "128"]
    assert main(args) == 0      # no --model: tiny-random's folder from adapter_config.json
    result = json.loads(capsys.readouterr().out)
    assert Path(result["model"]).name == "tiny-random"
    assert main(["-q", "generate", "What is 2 plus 2?", "--run", str(out), "--max-new-tokens", "3"]) == 0


def test_adapter_whose_base_model_is_gone_is_one_line(run3, tmp_path, cli):
    out, _ = run3
    moved = tmp_path / "adapter"
    shutil.copytree(out / "final", moved)
    meta = json.loads((moved / "adapter_config.json").read_text())
    meta["base_model_name_or_path"] = str(tmp_path / "deleted-model")
    (moved / "adapter_config.json").write_text(json.dumps(meta))
    code, err = cli("eval", "--adapter", str(moved))
    assert code == 2 and f"base model {tmp_path / 'deleted-model'}" in err and "--model" in err


def test_eval_run_errors(tmp_path, cli):
    code, err = cli("eval", "--run", str(tmp_path))
    assert code == 2 and err.endswith(f"--run: {tmp_path} holds no fedit run (no config.yaml)")
    (tmp_path / "config.yaml").write_text("federation: {rounds: 2}\n")
    code, err = cli("eval", "--run", str(tmp_path))
    assert code == 2 and "has no final adapter yet" in err and "checkpoints/round_NNNN" in err


# --- 3/4: what --resume accepts ----------------------------------------------------------------------

def test_resume_of_nothing_is_an_error(tmp_path, cli):
    code, err = cli("run", "--out", str(tmp_path / "missing"), "--resume")
    assert code == 2 and err.endswith(f"--resume: {tmp_path / 'missing'} holds no fedit run to resume "
                                      "(no config.yaml); drop --resume to start one")
    assert not (tmp_path / "missing").exists()


def test_resume_with_fewer_rounds_keeps_the_run(run3, cli):
    out, _ = run3
    before = (out / "config.yaml").read_bytes()
    code, err = cli("run", "--out", str(out), "--resume", "--rounds", "2")
    assert code == 2 and err.endswith(f"--rounds 2: the run in {out} already completed 3 rounds; "
                                      "--rounds can only extend a run")
    assert (out / "config.yaml").read_bytes() == before


def test_resume_is_tied_to_its_data(tmp_path, fixtures_dir, cli, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(fixtures_dir / "tiny", data)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    args = run_args(fixtures_dir, out, "--rounds", "1")
    args[args.index("--data") + 1] = "data"          # relative, as a user types it
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["data"] == str(data) and saved["data"]["test_data"] == str(fixtures_dir / "tiny_test.jsonl")
    fingerprint = json.loads((out / "data.json").read_text())
    assert [Path(f["path"]).name for f in fingerprint["data"]["files"]] == ["client_0.json", "client_1.json",
                                                                            "client_2.json"]
    # the same relative path from another folder names other data: refused
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(data, elsewhere / "data")
    monkeypatch.chdir(elsewhere)
    code, err = cli("run", "--out", str(out), "--resume", "--rounds", "2", "--data", "data")
    assert code == 2 and "--data" in err and str(data) in err
    # a client file edited since the run started: refused, naming the file
    records = json.loads((data / "client_1.json").read_text())
    records[0]["response"] = "something else"
    (data / "client_1.json").write_text(json.dumps(records))
    code, err = cli("run", "--out", str(out), "--resume", "--rounds", "2")
    assert code == 2 and f"{data / 'client_1.json'} changed since the run started" in err


# --- 5/12/14: runs that cannot produce a result -------------------------------------------------------------

def test_a_run_where_every_update_is_dropped_fails(tmp_path, fixtures_dir, cli):
    out = tmp_path / "run"
    code, err = cli(*run_args(fixtures_dir, out, "--rounds", "2"), "--max-len", "16")
    assert code == 2 and "round 1: every update was dropped" in err
    assert "none of its 15 records fits --max-len 16" in err
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


@pytest.mark.parametrize("flags, message", [
    (["--lr", "inf"], "--lr: must be a finite number, got inf"),
    (["--seed", "-1"], "--seed: must be in [0, 2**63), got -1"),
    (["--seed", str(2**63)], f"--seed: must be in [0, 2**63), got {2**63}"),
])
def test_bad_numbers_are_one_line(tmp_path, fixtures_dir, cli, flags, message):
    code, err = cli(*run_args(fixtures_dir, tmp_path / "run"), *flags)
    assert code == 2 and err.endswith(message)
    assert not (tmp_path / "run").exists()


def test_too_many_clients_per_round_says_where_the_clients_came_from(tmp_path, fixtures_dir, cli):
    code, err = cli(*run_args(fixtures_dir, tmp_path / "run"), "--clients-per-round", "4")
    assert code == 2 and err.endswith(f"--clients-per-round: 4 is more than the 3 clients "
                                      f"(the files of --data {fixtures_dir / 'tiny'})")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_writes_nothing(tmp_path, fixtures_dir, cli):
    code, err = cli(*run_args(fixtures_dir, tmp_path / "run"), "--device", "cuda")
    assert code == 2 and "--device cuda: no CUDA device is available" in err
    assert not (tmp_path / "run").exists()


def test_model_that_cannot_load_writes_nothing(tmp_path, fixtures_dir, cli):
    broken = tmp_path / "model"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    code, err = cli(*run_args(fixtures_dir, tmp_path / "run"), "--model", str(broken))
    assert code == 2 and f"cannot load model folder {broken}" in err
    assert not (tmp_path / "run").exists()


# --- 13/15: a full disk, a damaged checkpoint, a crash's leftovers ------------------------------------

def test_full_disk_during_a_checkpoint_loses_nothing(tmp_path, fixtures_dir, cli, monkeypatch):
    out = tmp_path / "run"
    real = checkpoint_mod.save_file
    calls = {"n": 0}

    def fill_disk_on_round_2(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_mod, "save_file", fill_disk_on_round_2)
    code, err = cli(*run_args(fixtures_dir, out, "--rounds", "3"))
    assert code == 2
    assert "round 2: cannot write its checkpoint" in err and "No space left on device" in err
    assert "no data was lost" in err and "round_0001" in err and "--resume" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["round_0001"]   # no temp folder left
    monkeypatch.setattr(checkpoint_mod, "save_file", real)
    assert main(["run", "--out", str(out), "--resume"]) == 0


def test_damaged_checkpoint_resumes_from_the_newest_intact_one(run3, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(run3[0], out)
    shutil.rmtree(out / "final")
    (out / "checkpoints" / "round_0003" / "state.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert main(["run", "--out", str(out), "--resume"]) == 0
    damaged = [line for line in capsys.readouterr().err.splitlines() if " is damaged " in line]
    assert len(damaged) == 1 and str(out / "checkpoints" / "round_0003") in damaged[0]
    assert "\n" not in damaged[0] and "weights_only" not in damaged[0]
    a, b = final_state(run3[0]), final_state(out)
    assert all(torch.equal(a[k], b[k]) for k in a)          # bit-identical to the uninterrupted run
    assert [r["round"] for r in metrics(out) if r["type"] == "round"] == [0, 1, 2, 3]


def test_leftover_temporaries_are_removed_at_the_next_start(run3, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run3[0], out)
    leftovers = [out / "checkpoints" / ".tmp-round_0004-999999999", out / ".final.tmp-x1y2z3w4",
                 out / ".metrics.jsonl.999999999.0123abcd.tmp"]
    for path in leftovers[:2]:
        path.mkdir()
    leftovers[2].write_text("{")
    assert main(["run", "--out", str(out), "--resume"]) == 0
    assert not any(p.exists() for p in leftovers)
