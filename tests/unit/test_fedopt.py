"""FedAdam, FedYogi and FedAdagrad (Reddi et al., 2021, Algorithm 2): two rounds on 1x1 tensors
against values computed by hand, state round-trips, and --server-lr's one default rule.

Every test uses beta1 = 0.5, tau = 1 or 0.75 and server_lr = 0.5; m starts at 0, v at tau^2.
    m_t = beta1 m + (1 - beta1) d ;  x <- x + lr * m_t / (sqrt(v_t) + tau)
"""

import io
import math

import pytest
import torch

from fedit.client import ClientUpdate
from fedit.config import Config, default_server_lr
from fedit.errors import ConfigError
from fedit.server import build_strategy, make_strategy

A, B = "m.lora_A.weight", "m.lora_B.weight"


def state(a, b):
    return {A: torch.tensor([[float(a)]]), B: torch.tensor([[float(b)]])}


def updates(*specs):
    """(a, b, num_examples) per client."""
    return [ClientUpdate(i, state(a, b), n, {"train_loss": 1.0}) for i, (a, b, n) in enumerate(specs)]


def strategy(name, tau=1.0, beta2=0.5):
    return make_strategy(name, server_lr=0.5, server_beta1=0.5, server_beta2=beta2, server_tau=tau,
                         num_clients=2, clients_per_round=2, seed=0)


def two_rounds(name, round1, round2, **kw):
    """Round 1 on a fresh strategy; round 2 on it and on a copy restored from its saved state
    (through torch.save/torch.load as a checkpoint does): both must agree bit for bit."""
    strat = strategy(name, **kw)
    x1, _ = strat.aggregate_train(1, state(0, 0), round1)
    buf = io.BytesIO()
    torch.save(strat.state_dict(), buf)
    buf.seek(0)
    restored = strategy(name, **kw)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    x2, _ = strat.aggregate_train(2, x1, round2(x1))
    x2r, _ = restored.aggregate_train(2, x1, round2(x1))
    assert all(torch.equal(x2[k], x2r[k]) for k in x2)
    assert all(torch.equal(strat.v[k], restored.v[k]) and torch.equal(strat.m[k], restored.m[k]) for k in x2)
    return x1, x2


def test_fedadam_two_rounds_by_hand():
    # beta2 = 0.5, tau = 1: v_{-1} = 1 ; v_t = 0.5 v + 0.5 d^2
    # round 1: A: clients 1 (3 examples) and 25 (1 example) -> mean (3 + 25)/4 = 7 -> d = 7
    #            m = 0.5*7 = 3.5 ; v = 0.5 + 24.5 = 25 ; x = 0 + 0.5 * 3.5/(5 + 1) = 7/24
    #          B: both -1 -> d = -1 ; m = -0.5 ; v = 0.5 + 0.5 = 1 ; x = 0.5 * -0.5/(1 + 1) = -0.125
    # round 2: one client at x1 + (1, -7): A: m = 1.75 + 0.5 = 2.25 ; v = 12.5 + 0.5 = 13
    #            x = 7/24 + 0.5 * 2.25/(sqrt(13) + 1)
    #          B: m = -0.25 - 3.5 = -3.75 ; v = 0.5 + 24.5 = 25 ; x = -0.125 + 0.5 * -3.75/6 = -0.4375
    x1, x2 = two_rounds("fedadam", updates((1, -1, 3), (25, -1, 1)),
                        lambda x: updates((x[A].item() + 1, x[B].item() - 7, 1)))
    assert x1[A].item() == pytest.approx(7 / 24) and x1[B].item() == pytest.approx(-0.125)
    assert x2[A].item() == pytest.approx(7 / 24 + 0.5 * 2.25 / (math.sqrt(13) + 1))
    assert x2[B].item() == pytest.approx(-0.4375)


def test_fedyogi_two_rounds_by_hand():
    # beta2 = 0.5, tau = 1: v_{-1} = 1 ; v_t = v - 0.5 d^2 sign(v - d^2)
    # round 1: A: d = 4: v = 1 - 8*sign(1 - 16) = 9 ; m = 2 ; x = 0.5 * 2/(3 + 1) = 0.25
    #          B: d = -1: v = 1 - 0.5*sign(0) = 1 ; m = -0.5 ; x = 0.5 * -0.5/2 = -0.125
    # round 2: A: d = 2: v = 9 - 2*sign(9 - 4) = 7 (Adam would give 6.5) ; m = 1 + 1 = 2
    #            x = 0.25 + 0.5 * 2/(sqrt(7) + 1)
    #          B: d = -3: v = 1 - 4.5*sign(1 - 9) = 5.5 ; m = -0.25 - 1.5 = -1.75
    #            x = -0.125 + 0.5 * -1.75/(sqrt(5.5) + 1)
    x1, x2 = two_rounds("fedyogi", updates((4, -1, 2), (4, -1, 5)),
                        lambda x: updates((x[A].item() + 2, x[B].item() - 3, 1)))
    assert x1[A].item() == pytest.approx(0.25) and x1[B].item() == pytest.approx(-0.125)
    assert x2[A].item() == pytest.approx(0.25 + 1 / (math.sqrt(7) + 1))
    assert x2[B].item() == pytest.approx(-0.125 - 0.875 / (math.sqrt(5.5) + 1))


def test_fedadagrad_two_rounds_by_hand():
    # tau = 0.75: v_{-1} = 0.5625 ; v_t = v + d^2 (beta2 = 0.9 is not used)
    # round 1: A: d = 1: v = 1.5625, sqrt 1.25 ; m = 0.5 ; x = 0.5 * 0.5/(1.25 + 0.75) = 0.125
    #          B: d = 0: v = 0.5625 ; m = 0 ; x = 0
    # round 2: A: d = -2: v = 5.5625 ; m = 0.25 - 1 = -0.75 ; x = 0.125 + 0.5 * -0.75/(sqrt(5.5625) + 0.75)
    #          B: d = 1: v = 1.5625 (the sum, no decay) ; m = 0.5 ; x = 0 + 0.5 * 0.5/(1.25 + 0.75) = 0.125
    x1, x2 = two_rounds("fedadagrad", updates((1, 0, 1)),
                        lambda x: updates((x[A].item() - 2, x[B].item() + 1, 1)), tau=0.75, beta2=0.9)
    assert x1[A].item() == pytest.approx(0.125) and x1[B].item() == 0.0
    assert x2[A].item() == pytest.approx(0.125 - 0.375 / (math.sqrt(5.5625) + 0.75))
    assert x2[B].item() == pytest.approx(0.125)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_optimizers_step_on_the_average_the_base_class_makes(name, monkeypatch):
    # The pseudo-gradient is whatever Strategy.aggregate_train returns (FedAvg by examples today,
    # --lora-aggregation's average otherwise): replace it, and the optimizer follows.
    from fedit.server.strategy import Strategy

    monkeypatch.setattr(Strategy, "aggregate_train", lambda self, r, g, u: (state(4, 0), {"seen": len(u)}))
    x1, metrics = strategy(name).aggregate_train(1, state(0, 0), updates((100, 100, 1)))
    # d = (4, 0): m = (2, 0) ; v(A) = 9 for Yogi (1 + 0.5*16), 8.5 for Adam, 17 for Adagrad
    v = {"fedadam": 8.5, "fedyogi": 9.0, "fedadagrad": 17.0}[name]
    assert x1[A].item() == pytest.approx(0.5 * 2 / (math.sqrt(v) + 1)) and x1[B].item() == 0.0
    assert metrics == {"seen": 1}


@pytest.mark.parametrize("name, expected", [("fedadam", 1e-3), ("fedyogi", 1e-3), ("fedadagrad", 1e-3),
                                            ("fedavgm", 1.0), ("scaffold", 1.0)])
def test_server_lr_default_is_one_rule_per_strategy(name, expected):
    cfg = Config().override({"strategy": name, "num_clients": 4, "clients_per_round": 2})
    assert cfg.federation.server_lr is None and default_server_lr(name) == expected
    assert build_strategy(cfg, 4).server_lr == expected
    assert build_strategy(cfg.override({"server_lr": 0.05}), 4).server_lr == 0.05


@pytest.mark.parametrize("overrides, flag", [
    ({"server_lr": 0.0}, "--server-lr"), ({"server_beta1": 1.0}, "--server-beta1"),
    ({"server_beta2": -0.1}, "--server-beta2"), ({"server_tau": 0.0}, "--server-tau"),
])
def test_server_optimizer_flags_are_validated(overrides, flag):
    with pytest.raises(ConfigError) as err:
        Config().override(overrides)
    assert str(err.value).startswith(flag + ":")


def test_server_state_flags():
    for name in ("fedadam", "fedyogi", "fedadagrad", "fedavgm", "scaffold"):
        assert strategy_class_flag(name, "factor_state")
    assert not strategy_class_flag("fedavg", "factor_state") and not strategy_class_flag("fedprox", "factor_state")
    assert [n for n in ("fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold")
            if strategy_class_flag(n, "needs_full_adapter")] == ["scaffold"]


def test_wrappers_report_the_flags_of_the_strategy_they_wrap():
    from fedit.server import StrategyWrapper

    wrapped = StrategyWrapper(make_strategy("scaffold", server_lr=1.0, num_clients=2, clients_per_round=1, seed=0))
    assert wrapped.factor_state is True and wrapped.needs_full_adapter is True
    plain = StrategyWrapper(make_strategy("fedavg", num_clients=2, clients_per_round=1, seed=0))
    assert plain.factor_state is False and plain.needs_full_adapter is False


def strategy_class_flag(name, attr):
    from fedit.server import strategy_class
    return getattr(strategy_class(name), attr)
