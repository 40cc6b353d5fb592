"""Aggregation maths, sampling and strategies on tiny tensors with hand-computed expectations."""

import math

import pytest
import torch

from fedit.client import ClientUpdate
from fedit.config import STRATEGY_NAMES, Config
from fedit.registry import STRATEGIES
from fedit.server import (ClientSampler, Strategy, StrategyWrapper, build_strategy, filter_updates, lora_product_gap,
                          make_strategy, strategy_class, weighted_mean)

A, B = "m.lora_A.weight", "m.lora_B.weight"


def state(a, b):
    return {A: torch.tensor([[float(a)]]), B: torch.tensor([[float(b)]])}


def test_weighted_mean_by_examples():
    out = weighted_mean([state(1, 2), state(4, 8)], [1, 3])
    # (1*1 + 3*4)/4 = 3.25 ; (1*2 + 3*8)/4 = 6.5
    assert out[A].item() == pytest.approx(3.25)
    assert out[B].item() == pytest.approx(6.5)


def test_weighted_mean_rejects_zero_weights():
    with pytest.raises(ValueError):
        weighted_mean([state(1, 1)], [0])


def test_lora_product_gap_hand_computed():
    # clients (a=1,b=2) and (a=3,b=0), equal weights: mean(BA) = (2+0)/2 = 1,
    # mean(B)mean(A) = 1 * 2 = 2 -> relative gap |2-1|/1 = 1
    gap = lora_product_gap([state(1, 2), state(3, 0)], [1, 1])
    assert gap["lora_gap_mean"] == pytest.approx(1.0)
    assert gap["lora_gap_max"] == pytest.approx(1.0)
    # identical clients: averaging the factors is exact
    assert lora_product_gap([state(2, 5), state(2, 5)], [1, 7])["lora_gap_mean"] == pytest.approx(0.0)


def test_sampler_deterministic_and_resumable():
    s1, s2 = ClientSampler(10, seed=3), ClientSampler(10, seed=3)
    first = [s1.sample(3) for _ in range(2)]
    assert first == [s2.sample(3) for _ in range(2)]
    assert all(len(set(r)) == 3 and all(0 <= c < 10 for c in r) for r in first)
    saved = s1.state_dict()
    nxt = s1.sample(3)
    s3 = ClientSampler(10, seed=999)
    s3.load_state_dict(saved)
    assert s3.sample(3) == nxt
    assert len({tuple(ClientSampler(10, seed=s).sample(5)) for s in range(5)}) > 1


def test_sampler_uses_no_global_rng():
    import random

    import numpy as np
    np.random.seed(0)
    random.seed(0)
    before = (np.random.get_state()[1].copy(), random.getstate())
    ClientSampler(100, seed=1).sample(5)
    assert (np.random.get_state()[1] == before[0]).all() and random.getstate() == before[1]


def test_strategy_registry_matches_config_choices():
    assert set(STRATEGIES) == set(STRATEGY_NAMES)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_registered_strategy_builds_from_the_config(name):
    cls = strategy_class(name)
    assert issubclass(cls, Strategy) and cls.name == name
    strategy = build_strategy(Config().override({"strategy": name, "num_clients": 4, "clients_per_round": 2}), 4)
    jobs = strategy.configure_train(1, {A: torch.zeros(1, 1)})
    assert len(jobs) == 2 and all(j.round == 1 and j.state[A].shape == (1, 1) for j in jobs)


def base(**kw):
    return {"num_clients": 1, "clients_per_round": 1, "seed": 0, **kw}


def _updates(*specs):
    return [ClientUpdate(i, state(a, b), n, {"train_loss": 1.0}) for i, (a, b, n) in enumerate(specs)]


def test_fedavg_aggregate_and_metrics():
    strat = make_strategy("fedavg", **base(num_clients=2, clients_per_round=2))
    new, metrics = strat.aggregate_train(1, state(0, 0), _updates((1, 2, 1), (4, 8, 3)))
    assert new[A].item() == pytest.approx(3.25) and metrics["num_examples"] == 4
    assert metrics["clients"] == [0, 1] and "lora_gap_mean" in metrics


def test_fedavgm_momentum_hand_computed():
    strat = make_strategy("fedavgm", server_lr=1.0, server_momentum=0.5, **base())
    w0 = state(0, 0)
    w1, _ = strat.aggregate_train(1, w0, _updates((2, 2, 1)))       # v = 2 ; w = 2
    assert w1[A].item() == pytest.approx(2.0)
    w2, _ = strat.aggregate_train(2, w1, _updates((3, 3, 1)))       # v = 0.5*2 + 1 = 2 ; w = 4
    assert w2[A].item() == pytest.approx(4.0)
    restored = make_strategy("fedavgm", server_lr=1.0, server_momentum=0.5, **base())
    restored.load_state_dict(strat.state_dict())
    assert torch.equal(restored.momentum[A], strat.momentum[A])


def test_fedprox_sends_mu():
    cfg = Config().override({"strategy": "fedprox", "proximal_mu": 0.3, "num_clients": 3, "clients_per_round": 1})
    [job] = build_strategy(cfg, 3).configure_train(1, state(0, 0))
    assert job.config == {"proximal_mu": 0.3}
    [job] = build_strategy(cfg.override({"strategy": "fedavg"}), 3).configure_train(1, state(0, 0))
    assert job.config == {}


class Halve(StrategyWrapper):
    """A toy wrapper: halves the step the inner strategy takes, keeps a counter as state."""

    name = "halve"

    def __init__(self, inner):
        super().__init__(inner)
        self.calls = 0

    def aggregate_train(self, round_idx, global_state, updates):
        new, metrics = super().aggregate_train(round_idx, global_state, updates)
        self.calls += 1
        return {k: global_state[k] + 0.5 * (new[k] - global_state[k]) for k in new}, metrics

    def state_dict(self):
        return {**super().state_dict(), "calls": self.calls}

    def load_state_dict(self, s):
        super().load_state_dict(s)
        self.calls = s["calls"]


def test_wrapper_composes_with_any_strategy():
    wrapped = Halve(make_strategy("fedavgm", server_lr=1.0, server_momentum=0.5, **base()))
    assert wrapped.describe() == "halve(fedavgm)" and wrapped.num_clients == 1
    w1, _ = wrapped.aggregate_train(1, state(0, 0), _updates((2, 2, 1)))   # fedavgm: 2 -> halved: 1
    assert w1[A].item() == pytest.approx(1.0)
    assert [j.client_id for j in wrapped.configure_train(2, w1)] == [0]
    saved = wrapped.state_dict()
    assert saved["calls"] == 1 and torch.equal(saved["inner"]["momentum"][A], torch.tensor([[2.0]]))
    again = Halve(make_strategy("fedavgm", server_lr=1.0, server_momentum=0.5, **base()))
    again.load_state_dict(saved)
    assert again.calls == 1 and torch.equal(again.inner.momentum[A], torch.tensor([[2.0]]))


def test_filter_updates_drops_bad_replies():
    ref = state(0, 0)
    good = ClientUpdate(0, state(1, 1), 5, {"train_loss": 1.0})
    nan = ClientUpdate(1, state(math.nan, 1), 5, {"train_loss": 1.0})
    shape = ClientUpdate(2, {A: torch.zeros(2, 2), B: torch.zeros(1, 1)}, 5, {})
    missing = ClientUpdate(3, {A: torch.zeros(1, 1)}, 5, {})
    empty = ClientUpdate(4, state(1, 1), 0, {})
    kept, failures = filter_updates(ref, [good, nan, shape, missing, empty])
    assert kept == [good]
    assert len(failures) == 4
    assert all(f.startswith(f"client {i}:") for i, f in zip([1, 2, 3, 4], failures))
    assert all("\n" not in f for f in failures)
