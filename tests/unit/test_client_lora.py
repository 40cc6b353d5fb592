"""--client-ranks / --client-targets syntax and draws, and the one check of which combinations of
--strategy, --lora-aggregation and per-client adapters make sense (each other one works)."""

import itertools

import pytest
import torch

from fedit.client import ClientUpdate
from fedit.client_lora import ClientLora, parse_client_ranks, parse_client_targets, resolve_clients
from fedit.config import LORA_AGGREGATIONS, Config
from fedit.errors import ConfigError
from fedit.registry import STRATEGIES
from fedit.server import build_strategy, check_methods, strategy_class


def test_cycled_ranks_and_targets():
    layouts = resolve_clients(8, "all-linear", "8,4,2", "q_proj, v_proj;all-linear", seed=0, num_clients=4)
    assert layouts == [ClientLora(8, "q_proj,v_proj"), ClientLora(4, "all-linear"), ClientLora(2, "q_proj,v_proj"),
                       ClientLora(8, "all-linear")]
    assert resolve_clients(8, "q_proj,v_proj", None, None, 0, 2) == [ClientLora(8, "q_proj,v_proj")] * 2


def test_drawn_ranks_follow_the_seed_and_their_own_rng():
    import numpy as np

    draw = lambda seed: [c.rank for c in resolve_clients(16, "all-linear", "4:0.5,8:0.3,16:0.2", None, seed, 200)]
    first = draw(3)
    assert first == draw(3) and first != draw(4)
    assert set(first) == {4, 8, 16} and 80 < first.count(4) < 120           # ~ 0.5 * 200
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    draw(3)
    assert (np.random.get_state()[1] == before).all()                         # the global RNG is untouched
    # the targets' draw does not shift the ranks' draw
    assert [c.rank for c in resolve_clients(16, "all-linear", "4:0.5,8:0.3,16:0.2", "q_proj:0.5;v_proj:0.5",
                                            3, 200)] == first


@pytest.mark.parametrize("text, message", [
    ("8,x", "--client-ranks: 'x' is not an integer rank"),
    ("8,0", "--client-ranks: rank 0 must be at least 1"),
    ("8,,4", "--client-ranks: '8,,4' has an empty entry"),
    ("4:0.5,8", "--client-ranks: '4:0.5,8' gives some entries a share; give every entry one (VALUE:SHARE) or none "
                "(cycled over clients)"),
    ("4:0.5,8:0.4", "--client-ranks: the shares in '4:0.5,8:0.4' sum to 0.9, not 1"),
    ("4:0.5,4:0.5", "--client-ranks: '4:0.5,4:0.5' lists a value twice"),
    ("4:a,8:1", "--client-ranks: share 'a' in '4:a,8:1' is not a number"),
])
def test_bad_client_ranks_one_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_client_ranks(text)
    assert str(err.value) == message
    with pytest.raises(ConfigError, match="^--client-ranks: "):
        Config().override({"client_ranks": text})


def test_bad_client_targets_and_none():
    with pytest.raises(ConfigError, match="^--client-targets: entry ',' names no module$"):
        parse_client_targets("q_proj; , ")
    assert Config().override({"client_ranks": "none", "client_targets": ""}).lora.client_ranks is None
    assert Config.from_dict({"lora": {"client_ranks": 4}}).lora.client_ranks == "4"


# -- combinations ------------------------------------------------------------------------------------
Q = "base_model.model.model.layers.0.self_attn.q_proj"
V = "base_model.model.model.layers.0.self_attn.v_proj"
GLOBAL = {f"{m}.lora_{f}.weight": torch.full((8, 3) if f == "A" else (3, 8), 0.5) for m in (Q, V) for f in "AB"}
RANKS = [None, "8", "8,4", "4:0.5,8:0.5"]
TARGETS = [None, "q_proj;all-linear"]


def cfg_of(strategy, agg, ranks, targets):
    return Config().override({"strategy": strategy, "lora_aggregation": agg, "client_ranks": ranks,
                              "client_targets": targets, "num_clients": 4, "clients_per_round": 4})


def expected_refusal(strategy, agg, ranks, targets):
    """The flags a refusal must name, or None where the combination must work."""
    cls = strategy_class(strategy)
    lower = ranks in ("8,4", "4:0.5,8:0.5")
    if agg == "product-svd" and cls.factor_state:
        return ("--strategy", "--lora-aggregation product-svd")
    if agg == "ffa" and cls.needs_full_adapter:
        return ("--strategy", "--lora-aggregation ffa")
    if targets and cls.needs_full_adapter:
        return ("--strategy", "--client-targets")
    if lower and cls.needs_full_adapter:
        return ("--strategy", "--client-ranks")
    if lower and agg == "factors":
        return ("--lora-aggregation factors", "--client-ranks")
    return None


@pytest.mark.parametrize("strategy, agg, ranks, targets",
                         list(itertools.product(sorted(STRATEGIES), LORA_AGGREGATIONS, RANKS, TARGETS)))
def test_every_combination_works_or_is_refused_naming_its_flags(strategy, agg, ranks, targets):
    cfg = cfg_of(strategy, agg, ranks, targets)
    refusal = expected_refusal(strategy, agg, ranks, targets)
    if refusal is not None:
        with pytest.raises(ConfigError) as err:
            check_methods(cfg)
        assert all(flag in str(err.value) for flag in refusal) and "\n" not in str(err.value), str(err.value)
        return
    check_methods(cfg)
    if strategy_class(strategy).needs_full_adapter:
        return  # its clients answer with more than an adapter (tested with the strategy itself)
    strategy_obj = build_strategy(cfg, 4)
    state = GLOBAL
    for round_idx in (1, 2):
        jobs = strategy_obj.configure_train(round_idx, state)
        updates = [ClientUpdate(j.client_id, {k: v + 0.1 * (j.client_id + 1) for k, v in j.state.items()}, 5,
                                {"train_loss": 1.0}) for j in jobs]
        state, metrics = strategy_obj.aggregate_train(round_idx, state, updates)
        assert state.keys() == GLOBAL.keys() and all(state[k].shape == GLOBAL[k].shape for k in GLOBAL)
        assert all(torch.isfinite(v).all() for v in state.values()) and "lora_gap_mean" in metrics
    assert not all(torch.equal(state[k], GLOBAL[k]) for k in GLOBAL)


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": "fedavgm", "lora_aggregation": "product-svd"},
     "--strategy fedavgm keeps server state per coordinate of the LoRA factors, which --lora-aggregation "
     "product-svd re-factors every round: use --strategy fedavg, fedprox with it, or another --lora-aggregation"),
    ({"client_ranks": "8,4"},
     "--lora-aggregation factors averages factors of one shape, but --client-ranks gives ranks below --lora-r 8: "
     "use --lora-aggregation zero-pad, ffa or product-svd"),
    ({"client_ranks": "16,4", "lora_aggregation": "zero-pad"},
     "--client-ranks: rank 16 is larger than --lora-r 8 (the global adapter has the largest rank: raise --lora-r)"),
    ({"client_ranks": "4,2", "lora_aggregation": "zero-pad"},
     "--lora-r 8 is larger than every rank of --client-ranks (at most 4): with --lora-aggregation zero-pad the "
     "extra components are never trained; set --lora-r 4"),
])
def test_refusals_are_one_exact_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_methods(Config().override(overrides))
    assert str(err.value) == message


def test_product_svd_may_keep_more_rank_than_any_client():
    check_methods(Config().override({"client_ranks": "4,2", "lora_aggregation": "product-svd"}))


def test_node_reported_ranks_are_checked_with_their_source():
    cfg = Config().override({"lora_aggregation": "zero-pad"})
    with pytest.raises(ConfigError, match="^node config lora-rank: rank 16 is larger than --lora-r 8"):
        check_methods(cfg, [ClientLora(16, "all-linear")], ("node config lora-rank", "node config lora-targets"))
