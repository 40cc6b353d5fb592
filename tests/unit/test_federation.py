"""The round loop with a stand-in transport: what every runner gets from it without writing it."""

import json

import pytest
import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.errors import FeditError
from fedit.runners.checkpoint import latest_checkpoint, load_checkpoint
from fedit.runners.federation import ClientFailure, Federation
from fedit.runners.rundir import RunDir
from fedit.server import build_strategy

KEY = "m.lora_A.weight"


class Scripted:
    """A transport whose clients answer with scripted values (or fail), recording the jobs."""

    def __init__(self, answer):
        self.answer, self.jobs, self.saved = answer, [], None

    def train(self, jobs):
        self.jobs.append(jobs)
        return [self.answer(job) for job in jobs]

    def state_dict(self):
        return {"seen": len(self.jobs)}

    def load_state_dict(self, state):
        self.saved = state


def federation(tmp_path, answer, rounds=2, **kw):
    cfg = Config().override({"model": "tiny-random", "num_clients": 3, "clients_per_round": 2, "rounds": rounds})
    run_dir = RunDir(tmp_path / "run")
    ckpt = run_dir.prepare(cfg, resume=False)
    fed = Federation(cfg, build_strategy(cfg, 3), Scripted(answer), run_dir,
                     evaluate=lambda state: {"overall": {"loss": float(state[KEY].sum()), "perplexity": 1.0}}, **kw)
    fed.start({KEY: torch.zeros(1, 2)}, ckpt)
    return fed


def records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_loop_logs_aggregates_evaluates_and_checkpoints(tmp_path):
    def answer(job):
        if job.client_id == min(j.client_id for j in fed.transport.jobs[-1]):
            return ClientUpdate(job.client_id, {KEY: torch.ones(1, 2) * job.round}, 2,
                                {"train_loss": 1.0, "round": 99, "client": -5})
        return ClientFailure(job.client_id, f"client {job.client_id}: no reply")

    fed = federation(tmp_path, lambda job: answer(job))
    state = fed.run()
    assert torch.equal(state[KEY], torch.full((1, 2), 2.0))    # round 2's only valid update
    recs = records(tmp_path)
    rounds = [r for r in recs if r["type"] == "round"]
    clients = [r for r in recs if r["type"] == "client"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["eval"]["overall"]["loss"] == 4.0
    assert all(len(r["dropped"]) == 1 and "no reply" in r["dropped"][0] for r in rounds[1:])
    # the server's own fields win over what a client reports
    assert [(c["round"], c["num_examples"]) for c in clients] == [(1, 2), (2, 2)]
    assert all(c["client"] >= 0 for c in clients)
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt.round == 2 and ckpt.extra == {"transport": {"seen": 2}}


def test_too_few_valid_updates_stop_the_run_before_anything_is_written(tmp_path):
    fed = federation(tmp_path, lambda job: ClientFailure(job.client_id, "boom"), min_updates=1)
    with pytest.raises(FeditError, match=r"round 1: 0 valid update\(s\), fewer than --min-nodes 1"):
        fed.run()
    assert latest_checkpoint(tmp_path / "run") is None


def test_a_non_finite_aggregate_is_never_saved(tmp_path):
    # float64 updates of 1e300 are finite, but their float32 average is not
    fed = federation(tmp_path, lambda job: ClientUpdate(job.client_id, {KEY: torch.full((1, 2), 1e300,
                                                                                        dtype=torch.float64)}, 1))
    with pytest.raises(FeditError, match="round 1: the aggregated adapter is unusable"):
        fed.run()
    assert latest_checkpoint(tmp_path / "run") is None
