"""The client update on tiny-random: deterministic per (seed, round, client), RNG-hygienic."""

import math
import random

import numpy as np
import pytest
import torch

from fedit.client.job import ClientJob, run_job
from fedit.config import DataConfig, TrainConfig
from fedit.errors import ConfigError
from fedit.data import load_examples


@pytest.fixture(scope="module")
def data(tiny_bench, fixtures_dir):
    examples, _ = load_examples(fixtures_dir / "tiny" / "client_0.json")
    return tiny_bench.tokenize(examples, DataConfig(max_len=128))


CFG = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=3)


def fit(bench, data, **kw):
    args = dict(seed=1, round_idx=1, client_id=0)
    args.update(kw)
    return bench.trainer.fit(bench.initial_state, data, kw.pop("cfg", CFG), **args)


def test_update_changes_adapter_and_reports_metrics(tiny_bench, data):
    up = fit(tiny_bench, data)
    assert up.num_examples == len(data) == 15
    assert set(up.state) == set(tiny_bench.initial_state)
    assert any(not torch.equal(up.state[k], tiny_bench.initial_state[k]) for k in up.state)
    assert math.isfinite(up.metrics["train_loss"]) and up.metrics["steps"] == 3
    assert up.metrics["tokens"] > 0 and up.metrics["padded_tokens"] >= up.metrics["tokens"]
    assert 0 < up.metrics["compute_seconds"] <= up.metrics["seconds"]


def test_same_inputs_same_update_and_global_rng_untouched(tiny_bench, data):
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(5)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    a, b = fit(tiny_bench, data), fit(tiny_bench, data)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert (np.random.get_state()[1] == before[1]).all() and random.getstate() == before[2]


def test_round_and_client_change_the_update(tiny_bench, data):
    base = fit(tiny_bench, data)
    for other in (fit(tiny_bench, data, round_idx=2), fit(tiny_bench, data, client_id=1)):
        assert any(not torch.equal(base.state[k], other.state[k]) for k in base.state)


def job_update(bench, data, config):
    job = ClientJob(0, 1, bench.initial_state, config)
    return run_job(bench.trainer, job, data, CFG, seed=1)[0]


def test_fedprox_pulls_towards_global(tiny_bench, data):
    def dist(update):
        return sum((update.state[k] - tiny_bench.initial_state[k]).norm() ** 2 for k in update.state)
    plain = job_update(tiny_bench, data, {})
    assert all(torch.equal(plain.state[k], fit(tiny_bench, data).state[k]) for k in plain.state)
    assert dist(job_update(tiny_bench, data, {"proximal_mu": 50.0})) < dist(plain)


def test_job_config_overrides_and_unknown_keys(tiny_bench, data):
    assert job_update(tiny_bench, data, {"local_steps": 1}).metrics["steps"] == 1
    with pytest.raises(ConfigError, match="unknown key 'proximal_muu'"):
        job_update(tiny_bench, data, {"proximal_muu": 1.0})
    with pytest.raises(ConfigError, match="local_steps: expected int"):
        job_update(tiny_bench, data, {"local_steps": "3"})
