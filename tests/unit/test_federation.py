"""The round loop with a stand-in transport: what every runner gets from it without writing it,
including what the server refuses to trust (issue 9, "found when tried as an attacker would")."""

import json

import pytest
import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.errors import FeditError, UpdateError
from fedit.runners.checkpoint import latest_checkpoint, load_checkpoint
from fedit.runners.federation import ClientFailure, Federation
from fedit.runners.rundir import RunDir
from fedit.server import FedAvg, build_strategy

KEY = "m.lora_A.weight"


class Scripted:
    """A transport whose clients answer with scripted values (or fail), recording the jobs."""

    def __init__(self, answer):
        self.answer, self.jobs, self.saved, self.replies = answer, [], None, []

    def train(self, jobs):
        self.jobs.append(jobs)
        self.replies.append([self.answer(job) for job in jobs])
        return self.replies[-1]

    def state_dict(self):
        return {"seen": len(self.jobs)}

    def load_state_dict(self, state):
        self.saved = state


def federation(tmp_path, answer, rounds=2, per_round=2, strategy=None, overrides=None, **kw):
    cfg = Config().override({"model": "tiny-random", "num_clients": 3, "clients_per_round": per_round,
                             "rounds": rounds, **(overrides or {})})
    run_dir = RunDir(tmp_path / "run")
    ckpt = run_dir.prepare(cfg, resume=False)
    fed = Federation(cfg, strategy or build_strategy(cfg, 3), Scripted(answer), run_dir,
                     evaluate=lambda state: {"overall": {"loss": float(state[KEY].sum()), "perplexity": 1.0}}, **kw)
    fed.start({KEY: torch.zeros(1, 2)}, ckpt)
    return fed


def records(tmp_path, kind=None):
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["type"] == kind]


def honest(value=0.0, n=16, **metrics):
    return lambda job: ClientUpdate(job.client_id, {KEY: torch.full((1, 2), value)}, n,
                                    {"train_loss": 1.0, **metrics})


def test_loop_logs_aggregates_evaluates_and_checkpoints(tmp_path):
    def answer(job):
        if job.client_id == min(j.client_id for j in fed.transport.jobs[-1]):
            return ClientUpdate(job.client_id, {KEY: torch.ones(1, 2) * job.round}, 2,
                                {"train_loss": 1.0, "round": 99, "client": -5, "num_examples": 7})
        return ClientFailure(job.client_id, f"client {job.client_id}: no reply")

    fed = federation(tmp_path, lambda job: answer(job))
    state = fed.run()
    assert torch.equal(state[KEY], torch.full((1, 2), 2.0))    # round 2's only valid update
    rounds, clients = records(tmp_path, "round"), records(tmp_path, "client")
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["eval"]["overall"]["loss"] == 4.0
    assert all(len(r["dropped"]) == 1 and "no reply" in r["dropped"][0] for r in rounds[1:])
    # the server's own fields win: a node's metrics live under "metrics", whatever their names
    assert [(c["round"], c["num_examples"]) for c in clients] == [(1, 2), (2, 2)]
    assert all(c["client"] >= 0 for c in clients)
    assert clients[0]["metrics"] == {"train_loss": 1.0, "round": 99, "client": -5, "num_examples": 7}
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt.round == 2 and ckpt.extra == {"transport": {"seen": 2}}


def test_too_few_valid_updates_stop_the_run_before_anything_is_written(tmp_path):
    fed = federation(tmp_path, lambda job: ClientFailure(job.client_id, "boom"), min_updates=1)
    with pytest.raises(FeditError, match=r"round 1: 0 valid update\(s\), fewer than --min-nodes 1"):
        fed.run()
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_non_finite_aggregate_is_never_saved(tmp_path):
    class Broken(FedAvg):
        def aggregate_train(self, round_idx, global_state, updates):
            return {KEY: torch.full((1, 2), float("inf"))}, {}

    fed = federation(tmp_path, honest(), strategy=Broken(num_clients=3, clients_per_round=2, seed=1))
    with pytest.raises(FeditError, match="round 1: the aggregated adapter is unusable"):
        fed.run()
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_float64_update_that_overflows_float32_is_dropped(tmp_path):
    # 1e300 is finite in float64, not once cast to float32: the reply is refused, the round goes on
    def answer(job):
        if job.client_id == fed.transport.jobs[-1][0].client_id:
            return ClientUpdate(job.client_id, {KEY: torch.full((1, 2), 1e300, dtype=torch.float64)}, 16)
        return honest(3.0)(job)

    fed = federation(tmp_path, lambda job: answer(job), rounds=1, per_round=3)
    assert torch.equal(fed.run()[KEY], torch.full((1, 2), 3.0))
    (rnd,) = records(tmp_path, "round")[1:]
    assert rnd["dropped"] == ["client 0: adapter update m.lora_A.weight: contains NaN or infinite values (as float32)"]


def test_a_claimed_count_is_capped_by_what_the_server_knows(tmp_path):
    # client 0 reported 16 records, then claims 10**12 examples: it weighs 16, like the others
    answer = lambda job: honest(90.0 if job.client_id == 0 else 0.0, 10**12 if job.client_id == 0 else 16)(job)
    fed = federation(tmp_path, answer, rounds=1, per_round=3, known_examples={0: 16, 1: 16, 2: 16})
    assert fed.run()[KEY][0, 0].item() == pytest.approx(30.0)
    by_client = {c["client"]: c for c in records(tmp_path, "client")}
    assert by_client[0]["num_examples"] == 16 and by_client[0]["claimed_examples"] == 10**12
    assert "claimed_examples" not in by_client[1]


@pytest.mark.parametrize("overrides, expected", [
    ({}, 45.0),                                   # share limit 0.5: counts 32, 16, 16
    ({"max_client_share": 1.0}, 90.0 * 10**12 / (10**12 + 32)),
    ({"max_client_examples": 16}, 30.0),          # the documented bound, where nothing is known
])
def test_without_knowledge_no_client_outweighs_the_others(tmp_path, overrides, expected):
    answer = lambda job: honest(90.0 if job.client_id == 0 else 0.0, 10**12 if job.client_id == 0 else 16)(job)
    fed = federation(tmp_path, answer, rounds=1, per_round=3, overrides=overrides)
    assert fed.run()[KEY][0, 0].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bad, shown", [([1.0, 2.0], "[1.0, 2.0]"), ("x", "'x'"), (float("nan"), "nan"),
                                        (True, "True")])
def test_a_bad_metric_drops_that_reply_only(tmp_path, bad, shown):
    answer = lambda job: honest(1.0, train_loss=bad)(job) if job.client_id == 0 else honest(5.0)(job)
    fed = federation(tmp_path, answer, rounds=1, per_round=3)
    assert torch.equal(fed.run()[KEY], torch.full((1, 2), 5.0))
    (rnd,) = records(tmp_path, "round")[1:]
    assert rnd["dropped"] == [f"client 0: metric 'train_loss' is {shown}, expected a finite number"]
    assert rnd["train_loss"] == 1.0 and rnd["clients"] == [1, 2]
    logged = {k: v for k, v in records(tmp_path, "client")[0].items() if k != "time"}
    assert logged == {"type": "client", "round": 1, "client": 0, "dropped": rnd["dropped"][0]}


def test_every_update_norm_is_logged(tmp_path):
    answer = lambda job: ClientUpdate(job.client_id, {KEY: torch.tensor([[3.0, 4.0]]) * (job.client_id + 1)}, 4)
    federation(tmp_path, answer, rounds=1, per_round=3).run()
    assert [c["update_norm"] for c in records(tmp_path, "client")] == [5.0, 10.0, 15.0]


def test_a_round_where_every_update_diverged_stops_the_run(tmp_path):
    # what --lr 1e30 does: every client sends NaN; the run must not go on as if nothing happened
    fed = federation(tmp_path, honest(float("nan")))
    with pytest.raises(FeditError, match=r"round 1: every update holds NaN or infinite values \(client \d: "
                                         r".*\); nothing of this round was saved.*try a lower --lr"):
        fed.run()
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_reply_the_strategy_cannot_decode_is_dropped(tmp_path):
    strategy = FedAvg(num_clients=3, clients_per_round=3, seed=1)

    def receive(job, update):
        if update.client_id == 0:
            raise UpdateError("client 0: compressed update is not int8")
        return update

    strategy.receive = receive
    fed = federation(tmp_path, honest(2.0), rounds=1, per_round=3, strategy=strategy)
    assert torch.equal(fed.run()[KEY], torch.full((1, 2), 2.0))
    assert records(tmp_path, "round")[1]["dropped"] == ["client 0: compressed update is not int8"]
