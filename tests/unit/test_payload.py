"""Bytes on the wire: the round loop's count (fedit.comm.payload, no Flower needed) equals the size
of what Flower really serializes for the same jobs and updates, and every round records it."""

import json

import pytest
import torch

from fedit.client.job import ClientJob, ClientUpdate
from fedit.comm.payload import job_payload_bytes, update_payload_bytes
from fedit.config import Config
from fedit.runners.federation import Federation
from fedit.runners.rundir import RunDir
from fedit.server import build_strategy

A, B = "m.lora_A.weight", "m.lora_B.weight"


def flower_bytes(content) -> int:
    """What Flower sends for a message content: every distinct object of its tree, deflated."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(content).values())


@pytest.mark.parametrize("chunk", [5242880, 100])
def test_counted_bytes_equal_what_flower_serializes(monkeypatch, chunk):
    pytest.importorskip("flwr")
    import flwr.app.message.array as flower_array

    from fedit.runners.flower import wire

    monkeypatch.setattr(flower_array, "FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", chunk)
    monkeypatch.setenv("FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", str(chunk))
    gen = torch.Generator().manual_seed(0)
    state = {A: torch.randn(8, 16, generator=gen), B: torch.zeros(16, 8), "n.lora_B.weight": torch.zeros(16, 8),
             "t": torch.randn(16, 8, generator=gen).t(), "s": torch.randn(4, 6, generator=gen)[:, ::2]}
    extra = {"control": {A: torch.ones(8, 16)}, "compress.aux": {A: torch.randint(0, 9, (5,), dtype=torch.int32)}}
    jobs = [ClientJob(2, 3, state, {}), ClientJob(0, 1, state, {"proximal_mu": 0.01, "local_steps": 4,
                                                                "compress": "topk:0.1"}, extra)]
    for job in jobs:
        assert job_payload_bytes(job) == flower_bytes(wire.train_content(job))
    coded = {A: torch.randint(-127, 127, (8, 16), dtype=torch.int8), B: torch.zeros(16, 8, dtype=torch.float16),
             "n.lora_B.weight": torch.zeros(16, 8).to(torch.bfloat16).view(torch.int16)}
    metrics = {"train_loss": 1.25, "steps": 3, "tokens": 10**6, "seconds": float("nan"), "neg": -7}
    for update in (ClientUpdate(1, state, 15, metrics), ClientUpdate(7, coded, 10**12, {}, extra)):
        assert update_payload_bytes(update) == flower_bytes(wire.update_content(update))


class Scripted:
    def __init__(self):
        self.jobs, self.replies = [], []

    def train(self, jobs):
        self.jobs.append(jobs)
        self.replies.append([ClientUpdate(j.client_id, {A: torch.ones(1, 2)}, 4, {"train_loss": 1.0}) for j in jobs])
        return self.replies[-1]

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def records(tmp_path, kind):
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


def test_bytes_of_every_round_and_the_run(tmp_path):
    cfg = Config().override({"model": "tiny-random", "num_clients": 3, "clients_per_round": 2, "rounds": 2})
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 3), Scripted(), run_dir)
    fed.start({A: torch.zeros(1, 2)}, run_dir.prepare(cfg, resume=False))
    fed.run()
    rounds = records(tmp_path, "round")
    for rnd, jobs, replies in zip(rounds, fed.transport.jobs, fed.transport.replies):
        assert rnd["bytes_down"] == sum(job_payload_bytes(j) for j in jobs) > 0
        assert rnd["bytes_up"] == sum(update_payload_bytes(u) for u in replies) > 0
    assert rounds[1]["bytes_down_total"] == rounds[0]["bytes_down"] + rounds[1]["bytes_down"]
    comm = json.loads((tmp_path / "run" / "communication.json").read_text())
    total = sum(r["bytes_down"] + r["bytes_up"] for r in rounds)
    assert comm["rounds"] == 2 and comm["bytes_total"] == total and comm["megabytes_total"] == total / 1e6
