"""LoRA-aware aggregation and heterogeneous clients end to end on tiny-random: a rank-r_k client on
the resident model trains exactly its own adapter; `fedit run` with ffa, product-svd and mixed ranks
(resume bit-identical); refusals before anything is written; the node config of a Flower node."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main
from fedit.client.job import ClientJob, run_job
from fedit.client.train import LocalTrainer
from fedit.config import Config
from fedit.data import load_examples
from fedit.model import add_lora, load_base_model
from fedit.runners import simulation
from fedit.runners.common import build_workbench
from fedit.server import client_view

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def setup(fedit_cache):
    cfg = Config().override({"model": "tiny-random", "precision": "fp32", "device": "cpu", "max_len": 128,
                             "batch_size": 4, "micro_batch_size": 2, "local_steps": 3, "lr": 1e-2})
    bench = build_workbench(cfg)
    examples, _ = load_examples(FIXTURES / "tiny" / "client_0.json")
    data = bench.tokenize(examples, cfg.data)
    g = torch.Generator().manual_seed(0)
    glob = {k: v if ".lora_A." in k else 0.01 * torch.randn(v.shape, generator=g)
            for k, v in bench.initial_state.items()}
    return cfg, bench, data, glob


def test_a_rank_k_client_trains_exactly_its_own_adapter(setup):
    cfg, bench, data, glob = setup
    test = data[:4]
    before = bench.evaluate(glob, test, 2)
    job = ClientJob(0, 1, client_view(glob, 4, "q_proj,v_proj"), {"lora_rank": 4, "lora_targets": "q_proj,v_proj"})
    update, _ = run_job(bench.trainer, job, data, cfg.train, seed=7)

    # the same adapter on its own: peft LoRA r=4, alpha = 16 * 4/8, on q_proj and v_proj only
    base = load_base_model("tiny-random", "cpu", "fp32")
    alone = add_lora(base.model, r=4, alpha=8, dropout=cfg.lora.lora_dropout, targets="q_proj,v_proj", seed=1)
    trainer = LocalTrainer(alone, device=base.device, autocast_dtype=None, pad_id=bench.tokenizer.pad_token_id)
    expected = trainer.fit(job.state, data, cfg.train, seed=7, round_idx=1, client_id=0)
    assert update.state.keys() == expected.state.keys() == job.state.keys()
    assert all(update.state[k].shape == job.state[k].shape for k in job.state)
    assert all(torch.equal(update.state[k], expected.state[k]) for k in job.state)
    assert update.metrics["train_loss"] == expected.metrics["train_loss"]
    assert not all(torch.equal(update.state[k], job.state[k]) for k in job.state)   # it did train
    # the global adapter is active again and untouched
    assert bench.model.active_adapter == "default"
    assert bench.evaluate(glob, test, 2) == before


def test_ffa_trains_only_b_and_a_is_the_seeded_init(setup):
    cfg, bench, data, glob = setup
    job = ClientJob(1, 1, client_view(glob, None, "all-linear", b_only=True), {})
    first, _ = run_job(bench.trainer, job, data, cfg.train, seed=7)
    assert first.state.keys() == job.state.keys() and all(".lora_B." in k for k in first.state)
    # whatever A the resident model holds now (another system's), the client uses the seeded init
    bench.evaluate({k: v + 1 for k, v in glob.items()}, data[:2], 2)
    again, _ = run_job(bench.trainer, job, data, cfg.train, seed=7)
    assert all(torch.equal(first.state[k], again.state[k]) for k in first.state)
    # and a rank-2 ffa client gets the first 2 rows of that init
    small = ClientJob(1, 1, client_view(glob, 2, "all-linear", b_only=True), {"lora_rank": 2,
                                                                              "lora_targets": "all-linear"})
    update, _ = run_job(bench.trainer, small, data, cfg.train, seed=7)
    assert all(update.state[k].shape[1] == 2 for k in update.state)
    from fedit.model import adapter_parameters
    name = next(n for n in bench.model.peft_config if n.startswith("fedit_r2_"))
    params = adapter_parameters(bench.model, name)
    assert all(torch.equal(p.detach(), bench.initial_state[k][:2]) for k, p in params.items() if ".lora_A." in k)


# -- fedit run -----------------------------------------------------------------------------------------
def run_args(out: Path, *extra: str) -> list[str]:
    return ["-q", "run", "--model", "tiny-random", "--precision", "fp32", "--data", str(FIXTURES / "tiny"),
            "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--clients-per-round", "2",
            "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--max-len", "128",
            "--lr", "1e-2", "--out", str(out), *extra]


def rounds_of(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


def final(out: Path) -> dict:
    return load_file(str(out / "final" / "adapter_model.safetensors"))


def test_ffa_run_keeps_a_and_learns(tmp_path, setup):
    _, bench, _, _ = setup
    out = tmp_path / "ffa"
    assert main(run_args(out, "--rounds", "2", "--lora-aggregation", "ffa")) == 0
    state = final(out)
    assert all(torch.equal(state[k], bench.initial_state[k]) for k in state if ".lora_A." in k)
    assert any(state[k].abs().sum() > 0 for k in state if ".lora_B." in k)
    rounds = rounds_of(out)
    assert rounds[-1]["lora_gap_max"] < 1e-5
    assert rounds[-1]["eval"]["overall"]["loss"] < rounds[0]["eval"]["overall"]["loss"]


def test_product_svd_run_logs_the_dropped_energy(tmp_path):
    out = tmp_path / "svd"
    assert main(run_args(out, "--rounds", "2", "--lora-aggregation", "product-svd", "--lora-r", "2")) == 0
    last = rounds_of(out)[-1]
    assert 0 < last["svd_energy_dropped_max"] < 1 and last["svd_energy_dropped_mean"] <= last["svd_energy_dropped_max"]
    assert all(v.shape[0] == 2 for k, v in final(out).items() if ".lora_A." in k)


def test_mixed_ranks_and_modules_resume_bit_identical(tmp_path, monkeypatch):
    flags = ["--rounds", "2", "--lora-aggregation", "zero-pad", "--client-ranks", "8,4,2",
             "--client-targets", "all-linear;q_proj,v_proj"]
    full = tmp_path / "full"
    assert main(run_args(full, *flags)) == 0
    stats = json.loads((full / "stats.json").read_text())["clients"]
    assert [(c["lora_rank"], c["lora_targets"]) for c in stats] == [(8, "all-linear"), (4, "q_proj,v_proj"),
                                                                    (2, "all-linear")]
    clients = [r for r in map(json.loads, (full / "metrics.jsonl").read_text().splitlines()) if r["type"] == "client"]
    assert {c["client"] for c in clients} & {1, 2}          # lower-rank clients took part

    crashed = tmp_path / "crashed"
    original = simulation.InProcessClients.train_client

    def crash_in_round_2(self, job):
        if job.round == 2:
            raise KeyboardInterrupt
        return original(self, job)

    monkeypatch.setattr(simulation.InProcessClients, "train_client", crash_in_round_2)
    assert main(run_args(crashed, *flags)) == 130
    monkeypatch.setattr(simulation.InProcessClients, "train_client", original)
    assert main(["-q", "run", "--out", str(crashed), "--resume"]) == 0
    a, b = final(full), final(crashed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("flags, message", [
    (["--strategy", "fedavgm", "--lora-aggregation", "product-svd"], "--strategy fedavgm keeps server state"),
    (["--client-ranks", "8,4"], "--lora-aggregation factors averages factors of one shape"),
    (["--client-ranks", "8,4,x"], "--client-ranks: 'x' is not an integer rank"),
])
def test_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(run_args(out, *flags)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]
    assert not out.exists()


def test_client_targets_outside_the_global_adapter_name_the_flag(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(run_args(out, "--lora-targets", "q_proj,v_proj", "--client-targets", "q_proj;k_proj")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--client-targets: 'k_proj' is not a module of the global adapter (--lora-targets: q_proj,v_proj)" in err
    assert not (out / "checkpoints").exists()


# -- a Flower node's own adapter ---------------------------------------------------------------------
def test_node_config_lora_rank_is_checked_and_reported():
    pytest.importorskip("flwr")
    from fedit.errors import ConfigError
    from fedit.runners.flower.client_app import check_job_lora, node_lora
    from fedit.runners.flower.launch import node_config

    cfg = Config().override({"lora_aggregation": "zero-pad"})
    assert node_lora({"lora-rank": 4, "lora-targets": "q_proj, v_proj"}, cfg) == (4, "q_proj,v_proj")
    assert node_lora({}, cfg) == (None, None)
    with pytest.raises(ConfigError, match=r"^node config lora-rank: expected an int from 1 to the run's --lora-r 8, "
                                          r"got 16$"):
        node_lora({"lora-rank": 16}, cfg)
    check_job_lora({"lora-rank": 4}, cfg, {"lora_rank": 4, "lora_targets": "all-linear"})
    check_job_lora({"lora-rank": 8}, cfg, {})
    with pytest.raises(ConfigError, match="^node config lora-rank=4 but the server asked for rank 8$"):
        check_job_lora({"lora-rank": 4}, cfg, {})
    assert node_config(Path("/d.json"), 1, 4, "q_proj,v_proj") == \
        'data-path="/d.json" client-index=1 lora-rank=4 lora-targets="q_proj,v_proj"'


def test_server_takes_a_node_s_own_adapter_over_the_run_s():
    pytest.importorskip("flwr")
    from types import SimpleNamespace

    from fedit.client_lora import ClientLora
    from fedit.runners.flower.server_app import FlowerServer

    cfg = Config().override({"lora_aggregation": "zero-pad", "client_ranks": "8,4,2"})
    info = {10: {"lora-rank": 2, "lora-targets": "q_proj"}, 11: {"lora-rank": 0, "lora-targets": ""},
            12: {}}
    layouts = FlowerServer._layouts(SimpleNamespace(cfg=cfg), {0: 10, 1: 11, 2: 12}, info)
    assert layouts == [ClientLora(2, "q_proj"), ClientLora(4, "all-linear"), ClientLora(2, "all-linear")]


@pytest.mark.slow
def test_deploy_local_with_node_ranks_matches_simulation(tmp_path: Path) -> None:
    """Nodes started with lora-rank 8, 4, 2 in their node config train what `fedit run --client-ranks
    8,4,2` trains: the same adapter."""
    pytest.importorskip("flwr")
    import os
    import subprocess
    import sys

    # fp32: exact parity needs no bf16 autocast (on AVX512-BF16/AMX CPUs "auto" trains in bf16)
    common = ["--model", "tiny-random", "--precision", "fp32", "--test-data", str(FIXTURES / "tiny_test.jsonl"),
              "--partition", "files",
              "--rounds", "2", "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2", "--seed", "7",
              "--clients-per-round", "2", "--lora-aggregation", "zero-pad", "--client-ranks", "8,4,2"]
    env = {**os.environ, "FEDIT_DEBUG": "1"}
    sim, dep = tmp_path / "sim", tmp_path / "dep"
    for args in (["run", "--data", str(FIXTURES / "tiny"), "--out", str(sim)],
                 ["deploy", "local", "--node-data", *map(str, sorted((FIXTURES / "tiny").glob("client_*.json"))),
                  "--out", str(dep)]):
        done = subprocess.run([sys.executable, "-m", "fedit.cli", *args, *common], capture_output=True, text=True,
                              env=env, timeout=500)
        assert done.returncode == 0, done.stderr[-4000:]
    nodes = json.loads((dep / "nodes.json").read_text())
    assert [(n["lora_rank"], n["lora_from"]) for n in nodes] == [(8, "node"), (4, "node"), (2, "node")]
    a, b = final(sim), final(dep)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert rounds_of(dep)[-1]["clients"] == rounds_of(sim)[-1]["clients"]
