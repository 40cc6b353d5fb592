"""Robust aggregation and trusted example counts on tiny tensors with hand-computed expectations."""

import pytest
import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.server import FedAvg, FedAvgM, build_strategy
from fedit.server.defences import RobustAggregation
from fedit.server.robust import coordinate_median, flatten_deltas, krum_scores, trim_count, trimmed_mean, unflatten
from fedit.server.trust import share_cap, trusted_counts

A, B = "m.lora_A.weight", "m.lora_B.weight"
ZERO = {A: torch.zeros(1, 3), B: torch.zeros(1, 1)}
CLIENTS = [([1, 2, 3], 10), ([2, 0, 3], 20), ([9, -5, 3], -100), ([4, 1, 3], 30), ([0, 0, 0], 0)]


def updates(rows, n=8):
    return [ClientUpdate(i, {A: torch.tensor([a], dtype=torch.float32), B: torch.tensor([[float(b)]])}, n,
                         {"train_loss": float(i)}) for i, (a, b) in enumerate(rows)]


def robust(method, inner=None, **kw):
    settings = dict(robust=method, trim_ratio=0.2, krum_f=1, max_update_norm=None)
    settings.update(kw)
    return RobustAggregation(inner or FedAvg(num_clients=5, clients_per_round=5, seed=0), **settings)


def aggregate(method, rows, **kw):
    return robust(method, **kw).aggregate_train(1, ZERO, updates(rows))


def test_flatten_and_unflatten_follow_the_reference_key_order():
    deltas = flatten_deltas([u.state for u in updates(CLIENTS[:2])], ZERO)
    assert deltas.tolist() == [[1, 2, 3, 10], [2, 0, 3, 20]]
    back = unflatten(deltas[1], ZERO)
    assert back[A].tolist() == [[2, 0, 3]] and back[B].tolist() == [[20]]


def test_coordinate_median_odd_and_even():
    # columns sorted: [0,1,2,4,9] [-5,0,0,1,2] [0,3,3,3,3] [-100,0,10,20,30]
    state, metrics = aggregate("median", CLIENTS)
    assert state[A].tolist() == [[2, 0, 3]] and state[B].tolist() == [[10]]
    assert metrics["clients"] == [0, 1, 2, 3, 4] and metrics["train_loss"] == pytest.approx(2.0)
    even = coordinate_median(flatten_deltas([u.state for u in updates(CLIENTS[:4])], ZERO))
    assert even.tolist() == [3, 0.5, 3, 15]     # means of the two middle values


def test_trimmed_mean_drops_k_at_each_end():
    assert [trim_count(m, 0.2) for m in (3, 4, 5, 9, 10)] == [0, 0, 1, 1, 2]
    state, metrics = aggregate("trimmed-mean", CLIENTS)
    assert state[A][0].tolist() == pytest.approx([7 / 3, 1 / 3, 3]) and state[B].item() == pytest.approx(10)
    assert metrics["robust_trimmed"] == 1
    with pytest.raises(ValueError):
        trimmed_mean(torch.zeros(4, 1), 2)


def test_krum_scores_select_and_multi_krum_averages_the_selected():
    points = [([x, 0, 0], 0) for x in (0, 1, 2, 100, 3)]
    deltas = flatten_deltas([u.state for u in updates(points)], ZERO)
    # f=1, m=5: each score sums the 2 smallest squared distances to the others
    assert krum_scores(deltas, 1).tolist() == [5, 2, 2, 97**2 + 98**2, 5]
    state, metrics = aggregate("krum", points)
    assert state[A].tolist() == [[1, 0, 0]] and metrics["robust_rejected"] == [0, 2, 3, 4]
    state, metrics = aggregate("multi-krum", points)
    assert state[A].tolist() == [[1.5, 0, 0]] and metrics["robust_rejected"] == [3]
    assert metrics["clients"] == [0, 1, 2, 4]


def test_norm_bound_clips_to_the_median_norm_or_the_given_bound():
    rows = [([3, 4, 0], 0), ([0, 1, 0], 0), ([30, 40, 0], 0)]   # norms 5, 1, 50
    state, metrics = aggregate("norm-bound", rows)
    assert state[A][0].tolist() == pytest.approx([2, 3, 0])      # ([3,4] + [0,1] + [3,4]) / 3
    assert metrics["norm_bound"] == 5 and metrics["robust_clipped"] == [2]
    state, metrics = aggregate("norm-bound", rows, max_update_norm=1.0)
    assert state[A][0].tolist() == pytest.approx([0.4, 2.6 / 3, 0]) and metrics["robust_clipped"] == [0, 2]


def test_robust_aggregate_feeds_the_inner_strategy():
    # FedAvgM (momentum 0.5, lr 1) on the median: the inner strategy's maths still apply
    inner = FedAvgM(server_lr=1.0, server_momentum=0.5, num_clients=5, clients_per_round=5, seed=0)
    wrapped = robust("median", inner=inner)
    first, _ = wrapped.aggregate_train(1, ZERO, updates(CLIENTS))
    second, _ = wrapped.aggregate_train(2, first, [ClientUpdate(u.client_id, first, 8) for u in updates(CLIENTS)])
    assert second[A].tolist() == [[3, 0, 4.5]]             # first + 0.5 * first's step
    assert wrapped.describe() == "median(fedavgm)"


def test_build_wraps_and_refuses_krum_without_enough_clients():
    cfg = Config().override({"robust": "krum", "num_clients": 10, "clients_per_round": 5})
    assert build_strategy(cfg, 10).describe() == "krum(fedavg)"
    with pytest.raises(ConfigError, match=r"^--krum-f 2: --robust krum needs at least 2f\+3 = 7 clients per "
                                          r"round, the run samples 5$"):
        build_strategy(cfg.override({"krum_f": 2}), 10)
    assert build_strategy(Config(), 10).describe() == "fedavg"


@pytest.mark.parametrize("counts, share, cap", [([10**12, 16, 16], 0.5, 32), ([10, 10], 0.5, 10),
                                                ([100, 10, 10], 0.4, 13), ([5], 0.5, 5), ([7, 3], 0.1, 3)])
def test_share_cap_hand_computed(counts, share, cap):
    # [100,10,10] at 0.4: c <= 0.4 (c + 20) -> c <= 13.3; [7,3] at 0.1 -> at least 1/m = 0.5
    assert share_cap(counts, share) == cap


def test_trusted_counts_use_knowledge_then_the_bound_then_the_share():
    claims = {0: 10**12, 1: 16, 2: 40}
    assert trusted_counts(claims, {0: 16, 1: 16, 2: 40}, None, 1.0) == {0: 16, 1: 16, 2: 40}
    # client 0 unknown: capped at the largest known size
    assert trusted_counts(claims, {1: 16, 2: 40}, None, 1.0) == {0: 40, 1: 16, 2: 40}
    assert trusted_counts(claims, {}, 20, 1.0) == {0: 20, 1: 16, 2: 20}
    assert trusted_counts(claims, {0: 16, 1: 16, 2: 40}, None, 0.5) == {0: 16, 1: 16, 2: 32}


@pytest.mark.parametrize("extra, words", [
    ({"dp_clip": 1.0, "dp_noise_multiplier": 1.0}, "does not combine with --dp-clip, which releases only their mean"),
    ({"secure_aggregation": True}, "does not combine with --secure-aggregation"),
    ({"lora_aggregation": "zero-pad", "client_ranks": "8,4"}, "which gives them different shapes"),
    ({"lora_aggregation": "product-svd"}, "does not combine with --lora-aggregation product-svd"),
])
def test_robust_refuses_what_hides_or_reshapes_individual_updates(extra, words):
    from fedit.config import Config
    from fedit.errors import ConfigError
    from fedit.server.build import check_methods

    cfg = Config().override({"num_clients": 6, "clients_per_round": 5, "robust": "median", **extra})
    with pytest.raises(ConfigError, match=f"^--robust median compares .*{words}"):
        check_methods(cfg)


def test_robust_with_ffa_compares_b_alone():
    from fedit.client.job import ClientUpdate
    from fedit.server import make_strategy
    from fedit.server.defences import RobustAggregation

    a, b = "m.lora_A.weight", "m.lora_B.weight"
    glob = {a: torch.ones(1, 2), b: torch.zeros(2, 1)}
    inner = make_strategy("fedavg", num_clients=3, clients_per_round=3, seed=0, lora_aggregation="ffa")
    strat = RobustAggregation(inner, robust="median", trim_ratio=0.2, krum_f=1, max_update_norm=None)
    ups = [ClientUpdate(i, {b: torch.tensor([[v], [0.0]])}, 1) for i, v in enumerate((1.0, 2.0, 100.0))]
    state, _ = strat.aggregate_train(1, glob, ups)
    assert torch.equal(state[a], glob[a]) and torch.allclose(state[b], torch.tensor([[2.0], [0.0]]))


def test_compression_refuses_secure_aggregation():
    from fedit.config import Config
    from fedit.errors import ConfigError
    from fedit.server.build import check_methods

    with pytest.raises(ConfigError, match="^--compress int8 codes each update .* --secure-aggregation"):
        check_methods(Config().override({"num_clients": 4, "clients_per_round": 3, "compress": "int8",
                                         "secure_aggregation": True}))


# -- robust defences and SCAFFOLD's control variates (issue 16, defect 2) ---------------------------

def scaffold_round(robust_name):
    """One SCAFFOLD round of 3 clients under --robust: two honest variate deltas of 1 and 3, one client
    claiming 2e5. Returns the server's control variate after the round."""
    from fedit.client.scaffold import DELTA_C

    cfg = Config().override({"strategy": "scaffold", "robust": robust_name, "num_clients": 3,
                             "clients_per_round": 3, "krum_f": 0})
    strat = build_strategy(cfg, 3)
    x0 = {A: torch.zeros(1, 3), B: torch.zeros(1, 1)}
    strat.configure_train(1, x0)
    ups = [ClientUpdate(i, {A: torch.full((1, 3), v), B: torch.zeros(1, 1)}, 5, {"train_loss": 1.0},
                        {DELTA_C: {A: torch.full((1, 3), dc), B: torch.zeros(1, 1)}})
           for i, (v, dc) in enumerate(((1.0, 1.0), (2.0, 3.0), (3.0, 2e5)))]
    strat.aggregate_train(1, x0, ups)
    inner = strat
    while hasattr(inner, "inner"):
        inner = inner.inner
    return inner.control


def test_robust_median_also_governs_scaffolds_control_variates():
    """Before the fix the median kept the adapter in place while the liar's 2e5 went into c unchecked
    (c = (1 + 3 + 2e5) / 3); now c = 3 clients x median(1, 3, 2e5) / N = 3 * 3 / 3 = 3."""
    control = scaffold_round("median")
    assert torch.equal(control[A], torch.full((1, 3), 3.0)) and torch.equal(control[B], torch.zeros(1, 1))


def test_robust_trimmed_mean_also_governs_scaffolds_control_variates():
    control = scaffold_round("trimmed-mean")      # trim 0 of 3 at ratio 0.2: the mean of all three
    assert torch.allclose(control[A], torch.full((1, 3), (1 + 3 + 2e5) / 3))


def test_krum_keeps_or_drops_a_replys_control_variate_with_it():
    control = scaffold_round("krum")                   # f = 0: the one reply closest to the others
    assert control[A].max().item() < 10


def test_norm_bound_with_scaffold_is_refused_naming_both_flags():
    from fedit.server.build import check_methods

    cfg = Config().override({"strategy": "scaffold", "robust": "norm-bound", "num_clients": 3,
                             "clients_per_round": 3})
    with pytest.raises(ConfigError) as err:
        check_methods(cfg)
    assert str(err.value) == ("--robust norm-bound bounds each client's adapter update but not the scaffold_dc "
                              "that --strategy scaffold aggregates beside it: drop one of them")
