"""Standard accounting (Poisson sampling, add/remove neighbours, RDP or PLD), pinned to fixed values
so an upstream change of dp-accounting fails here instead of silently changing the noise; the Poisson
sampler; DP-FedAvg rounds that sample nobody; adaptive clipping and its noised count."""

from __future__ import annotations

import math

import pytest
import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.privacy import accounting
from fedit.privacy.adaptive_clip import AdaptiveClip
from fedit.privacy.dp import noise_generator
from fedit.privacy.dp_strategy import DPFedAvg
from fedit.server import build_strategy, make_strategy
from fedit.server.sampling import ClientSampler, PoissonSampler

pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.pld import PLDAccountant  # noqa: E402
from dp_accounting.rdp import RdpAccountant  # noqa: E402

# The setting: N = 100 clients, m = 5 per round (q = 0.05), z = 1, 20 rounds, delta = 1e-5.
N, M, Z, T, DELTA = 100, 5, 1.0, 20, 1e-5


def test_fixed_values_of_the_three_accountings():
    """Pinned to 1e-3 (dp-accounting 0.6.0): fixed-size replace-one 14.954, Poisson add/remove RDP
    2.481, PLD 1.985. A change here means dp-accounting changed what a run's epsilon is."""
    fixed = accounting.epsilon("central", N, M, Z, T, DELTA, "fixed", "rdp")
    rdp = accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "rdp")
    pld = accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "pld")
    assert fixed == pytest.approx(14.954, abs=1e-3)
    assert rdp == pytest.approx(2.481, abs=1e-3)
    assert pld == pytest.approx(1.985, abs=1e-3)
    assert pld < rdp < fixed


def test_poisson_add_remove_matches_dp_accounting_computed_independently():
    rdp = RdpAccountant()   # dp-accounting's default: add/remove
    rdp.compose(dp_event.PoissonSampledDpEvent(M / N, dp_event.GaussianDpEvent(Z)), T)
    pld = PLDAccountant()
    pld.compose(dp_event.PoissonSampledDpEvent(M / N, dp_event.GaussianDpEvent(Z)), T)
    assert accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "rdp") == pytest.approx(rdp.get_epsilon(DELTA),
                                                                                             rel=1e-12)
    assert accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "pld") == pytest.approx(pld.get_epsilon(DELTA),
                                                                                             rel=1e-12)


def test_adaptive_count_is_accounted_as_one_gaussian_with_the_effective_noise():
    """z = 1 with the count's sigma_b = 1: effective multiplier 1/sqrt(2) under add/remove."""
    assert accounting.effective_noise(1.0, accounting.ADD_REMOVE, 1.0) == pytest.approx(1 / math.sqrt(2))
    assert accounting.effective_noise(1.0, accounting.REPLACE_ONE, 1.0) == pytest.approx(1 / math.sqrt(5))
    rdp = RdpAccountant()
    rdp.compose(dp_event.PoissonSampledDpEvent(M / N, dp_event.GaussianDpEvent(1 / math.sqrt(2))), T)
    with_count = accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "rdp", count_noise=1.0)
    assert with_count == pytest.approx(rdp.get_epsilon(DELTA), rel=1e-9)
    assert with_count > accounting.epsilon("central", N, M, Z, T, DELTA, "poisson", "rdp")


def test_pld_with_fixed_size_sampling_is_refused():
    with pytest.raises(ConfigError, match=r"^--dp-accountant pld: dp-accounting's PLD accountant has no fixed-size"):
        accounting.epsilon("central", N, M, Z, T, DELTA, "fixed", "pld")


def test_poisson_sampler_is_seeded_varies_and_can_draw_nobody():
    sizes = [len(PoissonSampler(10, 7).sample(1)) for _ in range(3)]
    assert sizes[0] == sizes[1] == sizes[2]                   # same seed, same draw
    sampler = PoissonSampler(10, 7)
    draws = [sampler.sample(2) for _ in range(400)]
    counts = [len(d) for d in draws]
    assert sum(counts) / 400 == pytest.approx(2.0, abs=0.2)   # q = 0.2 of 10 clients
    assert 0 in counts and max(counts) > 2
    again = PoissonSampler(10, 0)
    again.load_state_dict(sampler.state_dict())
    assert again.sample(2) == sampler.sample(2)
    with pytest.raises(ValueError, match="checkpoint sampled clients with 'poisson', not 'fixed'"):
        ClientSampler(10, 0).load_state_dict(sampler.state_dict())


def poisson_fedavg(n: int, m: int, seed: int = 0):
    strategy = make_strategy("fedavg", num_clients=n, clients_per_round=m, seed=seed)
    strategy.sampler = PoissonSampler(n, seed)
    return strategy


def test_dp_round_with_nobody_sampled_releases_the_noise_over_the_expected_cohort():
    strategy = DPFedAvg(poisson_fedavg(10, 2), clip=0.5, noise_multiplier=2.0, mode="central", delta=1e-5,
                        target_epsilon=None, noise_seed=3, rounds=5)
    assert strategy.releases_empty_rounds
    glob = {"a": torch.ones(300, 300)}
    state, metrics = strategy.aggregate_train(1, glob, [])
    assert (state["a"] - 1.0).std().item() == pytest.approx(2.0 * 0.5 / 2, rel=0.02)   # N(0,(zC)^2) / m
    assert metrics["clients"] == [] and metrics["num_examples"] == 0 and "train_loss" not in metrics
    assert metrics["dp_releases"] == 1 and metrics["dp_denominator"] == 2
    assert metrics["dp_epsilon"] == pytest.approx(accounting.epsilon("central", 10, 2, 2.0, 1, 1e-5, "poisson"))
    assert "Poisson sampling, add/remove neighbours" in metrics["dp_accounting"]


def test_dp_denominator_under_poisson_is_the_expected_cohort_not_the_drawn_one():
    strategy = DPFedAvg(poisson_fedavg(10, 5, seed=1), clip=10.0, noise_multiplier=0.0, mode="central", delta=1e-5,
                        target_epsilon=None, noise_seed=3, rounds=5)
    glob = {"a": torch.zeros(1)}
    jobs = strategy.configure_train(1, glob)
    assert len(jobs) != 5                                     # this seed draws another cohort size
    state, metrics = strategy.aggregate_train(1, glob, [ClientUpdate(j.client_id, {"a": torch.ones(1)}, 1)
                                                        for j in jobs])
    assert state["a"].item() == pytest.approx(len(jobs) / 5)
    assert metrics["dp_denominator"] == 5


def test_local_dp_under_poisson_averages_the_drawn_clients():
    """Local mode divided by the expected cohort too: one client drawn of m = 5 moved the adapter by 1/5."""
    strategy = DPFedAvg(poisson_fedavg(10, 5, seed=1), clip=10.0, noise_multiplier=0.0, mode="local", delta=1e-5,
                        target_epsilon=None, noise_seed=3, rounds=5)
    glob = {"a": torch.zeros(1)}
    jobs = strategy.configure_train(1, glob)
    assert len(jobs) != 5
    state, metrics = strategy.aggregate_train(1, glob, [ClientUpdate(j.client_id, {"a": torch.ones(1)}, 1)
                                                        for j in jobs])
    assert state["a"].item() == pytest.approx(1.0) and metrics["dp_denominator"] == len(jobs)


def test_adaptive_clip_moves_geometrically_towards_the_quantile():
    clip = AdaptiveClip(1.0, 0.5, 0.2, count_noise=0.0)
    gen = noise_generator(0, 0, 1)
    out = clip.step([0.5, 0.5, 0.5, 3.0], 4, gen)           # 3 of 4 within: b = 0.75 > 0.5, the clip shrinks
    assert out["dp_clip"] == 1.0 and clip.clip == pytest.approx(math.exp(-0.2 * 0.25))
    clip.step([5.0, 5.0], 2, gen)                            # none within: b = 0, it grows
    assert clip.clip == pytest.approx(math.exp(-0.2 * 0.25) * math.exp(0.2 * 0.5))


def test_dp_clip_auto_clips_at_the_adapted_norm_and_accounts_the_count():
    cfg = Config().override({"dp_clip": "auto", "dp_noise_multiplier": 1.0, "dp_clip_initial": 0.5,
                             "client_sampling": "poisson", "dp_noise_seed": 1})
    strategy = build_strategy(cfg, 10)
    glob = {"a": torch.zeros(2)}
    jobs = strategy.configure_train(1, glob)
    assert all("dp_clip" not in j.config for j in jobs)      # clients send their norms unclipped
    updates = [ClientUpdate(j.client_id, {"a": torch.tensor([3.0, 4.0])}, 1) for j in jobs]
    _, metrics = strategy.aggregate_train(1, glob, updates)
    assert metrics["dp_clip"] == 0.5 and metrics["dp_clip_next"] != 0.5
    count_noise = 5 / 20                                     # clients per round / 20
    assert metrics["dp_epsilon"] == pytest.approx(accounting.epsilon("central", 10, 5, 1.0, 1, 1e-5, "poisson", "rdp",
                                                                     count_noise))


@pytest.mark.parametrize("overrides,message", [
    ({"dp_clip": "often", "dp_noise_multiplier": 1.0}, "--dp-clip: must be a positive number or auto, got 'often'"),
    ({"dp_clip": "auto", "dp_noise_multiplier": 1.0, "dp_target_quantile": 1.5},
     "--dp-target-quantile: must be in (0, 1), got 1.5"),
    ({"client_sampling": "sometimes"}, "--client-sampling: 'sometimes' is not one of fixed, poisson"),
    ({"dp_accountant": "gdp"}, "--dp-accountant: 'gdp' is not one of rdp, pld"),
])
def test_new_flags_are_validated_with_their_name(overrides, message):
    with pytest.raises(ConfigError) as err:
        Config().override(overrides)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("overrides,message", [
    ({"dp_clip": 1.0, "dp_noise_multiplier": 1.0, "dp_accountant": "pld"}, "--dp-accountant pld: dp-accounting's PLD"),
    ({"client_sampling": "poisson", "secure_aggregation": True}, "--client-sampling poisson: secure aggregation"),
    ({"dp_clip": "auto", "dp_noise_multiplier": 1.0, "dp_mode": "local"}, "--dp-clip auto: adaptive clipping needs "
                                                                          "--dp-mode central"),
    ({"dp_clip": "auto", "dp_noise_multiplier": 1.0, "secure_aggregation": True}, "--dp-clip auto: adaptive clipping "
                                                                                  "needs each update's norm"),
])
def test_impossible_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_strategy(Config().override(overrides), 10)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_round_loop_keeps_the_adapter_when_poisson_sampling_draws_nobody(tmp_path):
    """Without DP a round that samples nobody trains nothing, keeps the adapter, and is still a round
    (logged, evaluated, checkpointed); the transport is not called for it."""
    from fedit.runners.federation import Federation
    from fedit.runners.rundir import RunDir

    class Transport:
        calls = 0

        def train(self, jobs):
            Transport.calls += 1
            return [ClientUpdate(j.client_id, {"a": torch.ones(2)}, 4, {"train_loss": 1.0}) for j in jobs]

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    cfg = Config().override({"model": "tiny-random", "num_clients": 10, "clients_per_round": 1, "rounds": 6,
                             "client_sampling": "poisson", "seed": 3})
    run_dir = RunDir(tmp_path / "run")
    fed = Federation(cfg, build_strategy(cfg, 10), Transport(), run_dir,
                     evaluate=lambda s: {"overall": {"loss": float(s["a"].sum()), "perplexity": 1.0}})
    fed.start({"a": torch.zeros(2)}, run_dir.prepare(cfg, resume=False))
    fed.run()
    rounds = fed.history[1:]
    sizes = [len(r["clients"]) for r in rounds]
    assert sizes == [1, 3, 0, 1, 3, 1] and Transport.calls == 5     # q = 0.1 of 10 clients, seed 3
    assert rounds[2]["no_client_sampled"] is True and "train_loss" not in rounds[2]
    assert [r["eval"]["overall"]["loss"] for r in rounds[:3]] == [2.0, 2.0, 2.0]   # the adapter kept
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())[-1] == "round_0006"
