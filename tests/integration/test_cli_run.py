"""`fedit run` end to end through the CLI on tiny-random: outputs, resume parity, plain-peft load,
and one-line errors for bad data and bad flags."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main
from fedit.runners import simulation
from fedit.runners.checkpoint import client_metrics, latest_checkpoint


def run_args(fixtures_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files",
            "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "4",
            "--micro-batch-size", "2", "--max-len", "128", "--out", str(out), *extra]


def final_state(out: Path) -> dict:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(run_args(fixtures_dir, out, "--rounds", "3")) == 0
    return out


def test_run_writes_the_run_directory(full_run):
    assert {p.name for p in full_run.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "final",
                                                   "stats.json", "categories.png"}
    assert (full_run / "categories.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["type"] == "round"]
    clients = [r for r in records if r["type"] == "client"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3]
    assert len(clients) == 6 and all(c["num_examples"] == 15 for c in clients)
    assert all("lora_gap_mean" in r and "per_category" in r["eval"] for r in rounds[1:])
    assert rounds[3]["eval"]["overall"]["loss"] < rounds[0]["eval"]["overall"]["loss"]
    assert sorted(p.name for p in (full_run / "checkpoints").iterdir()) == ["round_0002", "round_0003"]
    assert json.loads((full_run / "stats.json").read_text())["num_clients"] == 3


def test_adapter_loads_in_plain_peft(full_run):
    code = ("import sys, torch; from peft import AutoPeftModelForCausalLM; "
            "m = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1]); "
            "print(m(torch.tensor([[1, 2, 3]])).logits.shape[-1])")
    res = subprocess.run([sys.executable, "-c", code, str(full_run / "final")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) > 1000
    cfg = json.loads((full_run / "final" / "adapter_config.json").read_text())
    assert Path(cfg["base_model_name_or_path"]).is_dir()


def test_resume_after_crash_gives_identical_adapter(full_run, fixtures_dir, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    original = simulation.InProcessClients.train_client
    calls = {"n": 0}

    def crash_in_round_2(self, job):
        if job.round == 2 and calls["n"] == 1:
            raise KeyboardInterrupt
        if job.round == 2:
            calls["n"] += 1
        return original(self, job)

    # the round's clients are trained together by default (multi-LoRA): crash there too
    together = simulation.InProcessClients.train_together

    def crash_together_in_round_2(self, jobs):
        if jobs[0].round == 2:
            raise KeyboardInterrupt
        return together(self, jobs)

    monkeypatch.setattr(simulation.InProcessClients, "train_client", crash_in_round_2)
    monkeypatch.setattr(simulation.InProcessClients, "train_together", crash_together_in_round_2)
    assert main(run_args(fixtures_dir, out, "--rounds", "3")) == 130
    assert not (out / "final").exists() and (out / "checkpoints" / "round_0001").is_dir()
    monkeypatch.setattr(simulation.InProcessClients, "train_client", original)
    monkeypatch.setattr(simulation.InProcessClients, "train_together", together)
    assert main(["run", "--out", str(out), "--resume"]) == 0
    a, b = final_state(full_run), final_state(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rounds = [json.loads(x)["round"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(x)["type"] == "round"]
    assert rounds == [0, 1, 2, 3]


def test_clients_trained_one_after_another_give_the_same_adapter(full_run, fixtures_dir, tmp_path):
    """--concurrent-clients 1 (sequential) vs the default (the round's clients in shared passes):
    the same run up to float rounding; client records say how many clients trained together."""
    out = tmp_path / "sequential"
    assert main(run_args(fixtures_dir, out, "--rounds", "3", "--concurrent-clients", "1")) == 0
    a, b = final_state(full_run), final_state(out)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    together = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    alone = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {client_metrics(r)["trained_together"] for r in together if r["type"] == "client"} == {2}
    assert {client_metrics(r)["trained_together"] for r in alone if r["type"] == "client"} == {1}


def test_resume_refuses_changed_settings(full_run, capsys):
    assert main(["run", "--out", str(full_run), "--resume", "--lr", "0.5"]) == 2
    err = error_line(capsys.readouterr().err)
    assert "--lr" in err


def test_existing_out_is_not_overwritten(full_run, fixtures_dir, capsys):
    before = (full_run / "metrics.jsonl").read_bytes()
    assert main(run_args(fixtures_dir, full_run, "--rounds", "1")) == 2
    assert "--resume" in capsys.readouterr().err
    assert (full_run / "metrics.jsonl").read_bytes() == before


def error_line(stderr: str) -> str:
    """The error a user sees: exactly one line, the last one, and no traceback before it."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.fixture
def cli(capsys):
    """`fedit` in this process: exit code and the error line."""
    def call(*args):
        code = main(list(args))
        return code, error_line(capsys.readouterr().err) if code else ""
    return call


def test_user_error_in_a_real_process_has_no_traceback(tmp_path, fixtures_dir):
    res = subprocess.run([sys.executable, "-m", "fedit.cli", *run_args(fixtures_dir, tmp_path / "o"),
                          "--clients-per-round", "9"], capture_output=True, text=True)
    assert res.returncode == 2
    assert "--clients-per-round: 9 is more than the 3 clients" in error_line(res.stderr)
    assert not (tmp_path / "o").exists()          # refused before anything was written


@pytest.mark.parametrize("content, where", [
    ('[{"instruction": "a", "response": "b"}, {"instruction": 3, "response": "x"}]', "record 2 (index 1)"),
    ('{"instruction": "a", "response": "b"}\n{"response": "x"}\n', "record 2 (line 2)"),
    ('{"instruction": "a", "response": "b"}\n{oops\n', "line 2"),
])
def test_malformed_data_one_line_error(cli, tmp_path, fixtures_dir, content, where):
    bad = tmp_path / ("bad.json" if content.startswith("[") else "bad.jsonl")
    bad.write_text(content)
    code, err = cli(*run_args(fixtures_dir, tmp_path / "out"), "--data", str(bad), "--partition", "iid",
                    "--num-clients", "1", "--clients-per-round", "1")
    assert code == 2 and str(bad) in err and where in err, err


@pytest.mark.parametrize("args, flag", [
    (["--clients-per-round", "9"], "--clients-per-round"),
    (["--lora-r", "abc"], "--lora-r"),
    (["--precision", "fp8"], "--precision"),
    (["--micro-batch-size", "3"], "--batch-size"),
    (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_bad_flags_one_line_error(cli, tmp_path, fixtures_dir, args, flag):
    code, err = cli(*run_args(fixtures_dir, tmp_path / "out"), *args)
    assert code == 2 and flag in err, err
    assert not (tmp_path / "out" / "final").exists()


def test_eval_base_vs_adapter(full_run, fixtures_dir, capsys):
    common = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(fixtures_dir / "tiny_test.jsonl"),
              "--max-len", "128"]
    assert main(["-q", "eval", *common]) == 0
    base = json.loads(capsys.readouterr().out)
    assert main(["-q", "eval", *common, "--adapter", str(full_run / "final")]) == 0
    tuned = json.loads(capsys.readouterr().out)
    assert set(base["per_category"]) == {"classification", "closed_qa", "open_qa", "summarization"}
    assert base["overall"]["examples"] == tuned["overall"]["examples"] == 12
    assert tuned["overall"]["loss"] < base["overall"]["loss"]
    # the same number the run logged for its last round
    last = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert tuned["overall"]["loss"] == pytest.approx(last["eval"]["overall"]["loss"], rel=1e-5)


def test_generate_base_and_adapter(full_run, capsys):
    args = ["-q", "generate", "What is 2 plus 2?", "--model", "tiny-random", "--max-new-tokens", "5"]
    # random weights answer with whitespace: content is checked with SmolLM2 in test_smollm2.py
    assert main(args) == 0
    assert main([*args, "--adapter", str(full_run / "final")]) == 0


def test_eval_rejects_a_non_adapter_folder(tmp_path, cli):
    code, err = cli("eval", "--model", "tiny-random", "--adapter", str(tmp_path))
    assert code == 2 and "--adapter" in err


def test_partition_command(tmp_path, fixtures_dir, capsys):
    out = tmp_path / "parts"
    data = str(fixtures_dir / "tiny")
    assert main(["-q", "partition", "--data", data, "--partition", "shards", "--num-clients", "4", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sum(summary["clients"]) == 45 and len(summary["clients"]) == 4
    stats = json.loads((out / "stats.json").read_text())
    assert (out / "categories.png").read_bytes()[:4] == b"\x89PNG"
    files = sorted((out / "clients").glob("client_*.json"))
    assert [len(json.loads(f.read_text())) for f in files] == [c["records"] for c in stats["clients"]]


def test_a_start_that_failed_before_round_1_can_be_rerun(tmp_path, fixtures_dir, cli):
    out = tmp_path / "out"
    code, err = cli(*run_args(fixtures_dir, out), "--model", "./no/such/model")
    assert code == 2 and "no/such/model" in err
    assert not (out / "checkpoints").exists()
    assert main(run_args(fixtures_dir, out, "--rounds", "1")) == 0   # no --resume needed: nothing was lost


def test_a_diverging_run_stops_with_one_line(cli, tmp_path, fixtures_dir):
    # --lr 1e30 is finite (config validation passes) but every client diverges: a clear error
    code, err = cli(*run_args(fixtures_dir, tmp_path / "out"), "--lr", "1e30", "--rounds", "2")
    assert code == 2 and "round 1: every update holds NaN or infinite values" in err and "--lr" in err, err
    assert not (tmp_path / "out" / "final").exists() and latest_checkpoint(tmp_path / "out") is None
