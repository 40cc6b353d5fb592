"""Personalization (fedsa, dual, finetune) in the simulation on tiny-random: what stays at the client,
what the server aggregates, resume with personal state, and the refusals."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main
from fedit.client.job import ClientJob, run_job
from fedit.client.personal import DUAL_LOCAL, FEDSA_B
from fedit.config import Config
from fedit.runners.common import load_test
from fedit.runners.simulation import Simulation

from tests.integration.test_cli_run import error_line, run_args


def tiny_cfg(fixtures: Path, **flat) -> Config:
    return Config().override({"model": "tiny-random", "precision": "fp32", "device": "cpu",
                              "data": str(fixtures / "tiny"), "test_data": str(fixtures / "tiny_test.jsonl"),
                              "partition": "files", "clients_per_round": 2, "local_steps": 2, "batch_size": 4,
                              "micro_batch_size": 2, "max_len": 128, "rounds": 2, "logger": "none",
                              "concurrent_clients": 1, **flat})


def one_round(tmp_path: Path, cfg: Config):
    """A simulation after round 1, the round's jobs' replies as they reached the server, the start state."""
    sim = Simulation(cfg, tmp_path / "run")
    sim.setup()
    init = dict(sim.federation.state)
    replies, sent = [], []
    train = sim.federation.transport.train
    sim.federation.transport.train = lambda jobs: sent.extend(jobs) or replies.extend(train(jobs)) or replies
    record = sim.run_round(1)
    sim.sent = sent
    return sim, record, replies, init


def plain_update(sim: Simulation, cid: int, state: dict):
    """What client ``cid`` trains in round 1 without personalization (FedAvg's client)."""
    job = ClientJob(cid, 1, state, {})
    update, _ = run_job(sim.bench.trainer, job, sim.transport.client_data(cid), sim.cfg.train,
                        seed=sim.cfg.federation.seed)
    return update


def test_fedsa_keeps_each_clients_own_b_and_aggregates_a(tmp_path, fixtures_dir):
    sim, record, replies, init = one_round(tmp_path, tiny_cfg(fixtures_dir, personalization="fedsa"))
    clients = record["clients"]
    plain = {cid: plain_update(sim, cid, init) for cid in clients}
    b_keys = [k for k in init if ".lora_B." in k]
    a_keys = [k for k in init if ".lora_A." in k]
    assert all(set(r.state) == set(a_keys) for r in replies)            # no B ever left a client
    for cid in clients:                                                  # each client's own B, not an average
        own = sim.transport.client_states[cid][FEDSA_B]
        assert sorted(own) == sorted(b_keys)
        assert all(torch.equal(own[k], plain[cid].state[k]) for k in b_keys)
    one, two = (sim.transport.client_states[c][FEDSA_B] for c in clients)
    assert not torch.equal(one[b_keys[0]], two[b_keys[0]])
    weights = [plain[c].num_examples for c in clients]
    for k in a_keys:                                                     # A: the example-weighted mean
        mean = sum(w * plain[c].state[k] for w, c in zip(weights, clients)) / sum(weights)
        torch.testing.assert_close(sim.state[k], mean, rtol=0, atol=1e-6)
    assert all(torch.equal(sim.state[k], init[k]) for k in b_keys)      # the global B stays the seeded init
    assert all(set(job.state) == set(a_keys) for job in sim.sent)       # and no B in a job either


def test_dual_local_adapter_never_leaves_the_client(tmp_path, fixtures_dir):
    sim, record, replies, init = one_round(tmp_path, tiny_cfg(fixtures_dir, personalization="dual"))
    for reply in replies:
        assert set(reply.state) == set(init) and not reply.arrays
        local = sim.transport.client_states[reply.client_id][DUAL_LOCAL]
        assert sorted(local) == sorted(init)
        assert any(v.abs().sum() > 0 for k, v in local.items() if ".lora_B." in k)   # the local adapter trained
        sent = [t for t in reply.state.values()]
        assert not any(t.shape == v.shape and torch.equal(t, v) for v in local.values() for t in sent)
    fedavg = json.loads(json.dumps(one_round(tmp_path / "f", tiny_cfg(fixtures_dir))[1]))
    assert record["bytes_up"] == fedavg["bytes_up"]                      # exactly FedAvg's replies
    assert record["bytes_down"] - fedavg["bytes_down"] == 2 * 28         # + the 'personalization' key per job


@pytest.mark.parametrize("method", ["fedsa", "dual"])
def test_resume_is_bit_identical_with_personal_state(tmp_path, fixtures_dir, method):
    extra = ("--personalization", method, "--logger", "none")
    # 2 of 3 clients per round: some client of round 2 trained in round 1, before the cut
    assert main(run_args(fixtures_dir, tmp_path / "full", "--rounds", "2", *extra)) == 0
    assert main(run_args(fixtures_dir, tmp_path / "cut", "--rounds", "1", *extra)) == 0
    assert main(["run", "--out", str(tmp_path / "cut"), "--resume", "--rounds", "2"]) == 0
    for cid in range(3):
        folder = f"personal/client_{cid:03d}/adapter_model.safetensors"
        full, cut = load_file(str(tmp_path / "full" / folder)), load_file(str(tmp_path / "cut" / folder))
        assert all(torch.equal(full[k], cut[k]) for k in full)
    full, cut = (load_file(str(tmp_path / d / "final/adapter_model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_finetune_writes_every_clients_adapter_and_dual_doubles_the_rank(tmp_path, fixtures_dir):
    out = tmp_path / "ft"
    assert main(run_args(fixtures_dir, out, "--rounds", "1", "--personalization", "finetune",
                         "--personal-steps", "2", "--client-test-fraction", "0.2", "--logger", "none")) == 0
    index = json.loads((out / "personal/personal.json").read_text())
    assert index["personalization"] == "finetune" and index["clients"] == [0, 1, 2]
    final = load_file(str(out / "final/adapter_model.safetensors"))
    tuned = load_file(str(out / "personal/client_001/adapter_model.safetensors"))
    assert set(tuned) == set(final) and not all(torch.equal(final[k], tuned[k]) for k in final)
    split = json.loads((out / "client_test.json").read_text())
    assert split["fraction"] == 0.2 and [c["records"] for c in split["clients"]] == [3, 3, 3]
    assert json.loads((out / "stats.json").read_text())["clients"][0]["records"] == 12


@pytest.mark.parametrize("flags, message", [
    (("--personalization", "fedsa", "--lora-aggregation", "ffa"),
     "--personalization fedsa does not combine with --lora-aggregation ffa, which trains and shares only B, "
     "which fedsa keeps at the client: drop one of them"),
    (("--personalization", "dual", "--strategy", "scaffold"),
     "--personalization dual does not combine with --strategy scaffold, which keeps per-client state on the same "
     "factors: drop one of them"),
    (("--personalization", "fedsa", "--strategy", "scaffold"),   # the advice was "use another --lora-aggregation"
     "--strategy scaffold needs every client to train the whole adapter, but --personalization fedsa trains only "
     "part of it: drop --personalization fedsa"),
    (("--client-test-fraction", "1.5"), "--client-test-fraction: must be in (0, 1), got 1.5"),
    (("--client-test-fraction", "0.01"), "--client-test-fraction 0.01: client 0 has 15 record(s), too few to hold "
     "0.01 of them out and keep some to train on (it needs at least 51)"),
])
def test_refusals_are_one_line(tmp_path, fixtures_dir, capsys, flags, message):
    assert main(run_args(fixtures_dir, tmp_path / "o", *flags)) == 2
    assert error_line(capsys.readouterr().err) == f"fedit run: error: {message}"
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def dual_run(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("dual") / "run"
    assert main(run_args(fixtures_dir, out, "--rounds", "2", "--personalization", "dual", "--logger", "none")) == 0
    return out


def test_client_k_uses_the_personal_model_exactly(dual_run, capsys):
    """eval --client K loads the dual pair as one rank-2r adapter: the same loss as both adapters active."""
    from fedit.experiment.per_client import personal_state, record_arrays
    from fedit.model import load_adapter_state
    from fedit.runners.source import load_source_model, resolve_source

    assert main(["eval", "--run", str(dual_run), "--client", "1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["adapter"] == str(dual_run / "personal/client_001")
    source = resolve_source({}, run=str(dual_run))
    bench = load_source_model(source)
    test = bench.tokenize(load_test(source.cfg), source.cfg.data, train_on_prompt=False)
    glob = load_adapter_state(dual_run / "final")
    state, local = personal_state(dual_run / "personal/client_001", glob)
    assert all(torch.equal(state[k], glob[k]) for k in glob)        # the pair's global half is the global adapter
    num, den = record_arrays(bench, test, 8, state, local)
    assert shown["overall"]["loss"] == pytest.approx(num.sum() / den.sum(), rel=1e-5)
    assert shown["overall"]["loss"] != pytest.approx(json.loads(
        (dual_run / "metrics.jsonl").read_text().splitlines()[-1])["eval"]["overall"]["loss"], rel=1e-6)


def test_client_k_errors_are_one_line(dual_run, tmp_path, capsys):
    assert main(["eval", "--run", str(dual_run), "--client", "7"]) == 2
    assert error_line(capsys.readouterr().err) == f"fedit eval: error: --client 7: {dual_run} has no client 7 " \
                                                  "(its clients are 0..2)"
    plain = tmp_path / "plain"   # the same run, as if trained without personalization
    shutil.copytree(dual_run, plain)
    config = plain / "config.yaml"
    config.write_text(config.read_text().replace("personalization: dual", "personalization: none"))
    for command in (["generate", "hi"], ["export", "--out", str(tmp_path / "x")], ["chat"]):
        assert main([*command, "--run", str(plain), "--client", "0"]) == 2
        assert error_line(capsys.readouterr().err) == f"fedit {command[0]}: error: --client 0: {plain} was trained " \
            "without --personalization, so it has no personal adapters; use the global adapter (omit --client)"
    assert not (tmp_path / "x").exists()


def test_fedprox_pulls_only_the_shared_part(tmp_path, fixtures_dir):
    """FedProx's proximal term anchors what the job carries; dual's local adapter has no anchor (it was a
    KeyError on 'local/...')."""
    sim, record, replies, init = one_round(tmp_path, tiny_cfg(fixtures_dir, personalization="dual",
                                                              strategy="fedprox", proximal_mu=0.1))
    assert record["dropped"] == [] and all(set(r.state) == set(init) for r in replies)
    assert all(DUAL_LOCAL in sim.transport.client_states[r.client_id] for r in replies)
