"""DP-FedAvg: clipping on hand-made deltas, the noise's standard deviation, the accountant against
dp-accounting called here independently, the budget, and z = 0 / huge C = equal-weight FedAvg."""

from __future__ import annotations

import math

import pytest
import torch

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.privacy.dp import clip_to_norm, dp_client_transform, gaussian_like, l2_norm, noise_generator
from fedit.privacy.dp_strategy import DPFedAvg
from fedit.server import build_strategy, make_strategy

dp_accounting = pytest.importorskip("dp_accounting")
from dp_accounting import dp_event  # noqa: E402
from dp_accounting.privacy_accountant import NeighboringRelation  # noqa: E402
from dp_accounting.rdp import RdpAccountant  # noqa: E402


def fedavg(n: int = 4, m: int = 4, seed: int = 0):
    return make_strategy("fedavg", num_clients=n, clients_per_round=m, seed=seed)


def dp(inner=None, **kw) -> DPFedAvg:
    args = dict(clip=1.0, noise_multiplier=1.0, mode="central", delta=1e-5, target_epsilon=None, noise_seed=3,
                rounds=5)
    args.update(kw)
    return DPFedAvg(inner or fedavg(), **args)


def test_clipping_is_exact_on_hand_made_deltas():
    d = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([[0.0, 4.0]])}     # ||d|| = 5 over both tensors
    assert l2_norm(d) == 5.0
    clipped, norm = clip_to_norm(d, 1.0)
    assert norm == 5.0
    assert torch.equal(clipped["a"], torch.tensor([0.6, 0.0])) and torch.equal(clipped["b"], torch.tensor([[0.0, 0.8]]))
    same, _ = clip_to_norm(d, 10.0)                                        # inside the ball: untouched
    assert torch.equal(same["a"], d["a"]) and torch.equal(same["b"], d["b"])
    zero, norm = clip_to_norm({"a": torch.zeros(3)}, 1.0)
    assert norm == 0.0 and torch.equal(zero["a"], torch.zeros(3))


def test_client_transform_clips_the_change_to_the_global_adapter():
    glob = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[1.0, 1.0]])}
    trained = {"a": torch.tensor([4.0, 1.0]), "b": torch.tensor([[1.0, 5.0]])}   # delta (3, 0), (0, 4): norm 5
    job = ClientJob(0, 1, glob, {"dp_clip": 2.5})
    out = dp_client_transform(ClientUpdate(0, trained, 7, {"train_loss": 1.0}), job, {})
    assert torch.equal(out.state["a"], torch.tensor([2.5, 1.0])) and torch.equal(out.state["b"], torch.tensor([[1.0, 3.0]]))
    assert out.num_examples == 7 and out.metrics == {"train_loss": 1.0}
    plain = ClientUpdate(0, trained, 7)
    assert dp_client_transform(plain, ClientJob(0, 1, glob, {}), {}) is plain      # no dp_clip: untouched


def test_noise_has_the_requested_standard_deviation():
    like = {"a": torch.zeros(400, 500)}                                     # 200k coordinates
    noise = gaussian_like(like, 0.3, noise_generator(1234, 0, 1))["a"]
    # sample std of 200k N(0, 0.09) draws: standard error 0.3 / sqrt(4e5) = 5e-4; 2 % is ~12 errors
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.005
    again = gaussian_like(like, 0.3, noise_generator(1234, 0, 1))["a"]
    other = gaussian_like(like, 0.3, noise_generator(1234, 0, 2))["a"]
    assert torch.equal(noise, again) and not torch.equal(noise, other)


def test_local_mode_client_noise_is_z_times_clip():
    glob = {"a": torch.zeros(300, 300)}
    job = ClientJob(2, 1, glob, {"dp_clip": 0.5, "dp_noise": 2.0, "dp_noise_seed": 9})
    out = dp_client_transform(ClientUpdate(2, {"a": torch.zeros(300, 300)}, 1), job, {})
    assert out.state["a"].std().item() == pytest.approx(2.0 * 0.5, rel=0.02)


def test_server_noise_on_the_sum_divided_by_the_sampled_count():
    """Zero deltas from all m = 4 sampled clients: the new adapter is global + N(0, (zC)^2) / m."""
    strategy = dp(fedavg(4, 4), clip=0.5, noise_multiplier=2.0)
    glob = {"a": torch.ones(300, 300)}
    jobs = strategy.configure_train(1, glob)
    assert [j.config for j in jobs] == [{"dp_clip": 0.5}] * 4
    state, metrics = strategy.aggregate_train(1, glob, [ClientUpdate(j.client_id, glob, 10) for j in jobs])
    noise = state["a"] - 1.0
    assert noise.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert metrics["dp_denominator"] == 4 and metrics["dp_noise_multiplier"] == 2.0


def test_zero_noise_huge_clip_equals_fedavg_with_equal_weights():
    glob = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([[1.0]])}
    states = [{"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([[3.0]])},
              {"a": torch.tensor([-1.0, 5.0]), "b": torch.tensor([[0.5]])},
              {"a": torch.tensor([4.0, -2.0]), "b": torch.tensor([[1.0]])}]
    updates = [ClientUpdate(i, s, n) for i, (s, n) in enumerate(zip(states, (1, 10, 100)))]
    strategy = dp(fedavg(3, 3), clip=1e9, noise_multiplier=0.0)
    strategy.configure_train(1, glob)
    state, metrics = strategy.aggregate_train(1, glob, updates)
    equal, _ = fedavg(3, 3).aggregate_train(1, glob, [ClientUpdate(u.client_id, u.state, 1) for u in updates])
    weighted, _ = fedavg(3, 3).aggregate_train(1, glob, updates)
    for k in glob:
        assert torch.allclose(state[k], equal[k], atol=1e-6)
    assert torch.allclose(state["a"], torch.tensor([4 / 3, 5 / 3]))
    assert not torch.allclose(state["a"], weighted["a"])                  # example weights would differ
    assert metrics["clients"] == [0, 1, 2] and metrics["dp_epsilon"] == math.inf


def test_a_client_that_did_not_clip_is_clipped_by_the_server():
    glob = {"a": torch.zeros(2)}
    strategy = dp(fedavg(2, 2), clip=1.0, noise_multiplier=0.0)
    strategy.configure_train(1, glob)
    state, metrics = strategy.aggregate_train(1, glob, [ClientUpdate(0, {"a": torch.tensor([30.0, 40.0])}, 1),
                                                        ClientUpdate(1, {"a": torch.tensor([0.0, 0.0])}, 1)])
    assert torch.allclose(state["a"], torch.tensor([0.3, 0.4]))        # (0.6, 0.8) / m = 2
    assert metrics["dp_clipped_fraction"] == 0.5


def test_epsilon_matches_dp_accounting_computed_independently():
    """N = 10 clients, m = 5 sampled without replacement, z = 1.0, T = 3 releases, delta 1e-5."""
    strategy = dp(fedavg(10, 5), noise_multiplier=1.0)
    glob = {"a": torch.zeros(2)}
    for r in (1, 2, 3):
        jobs = strategy.configure_train(r, glob)
        _, metrics = strategy.aggregate_train(r, glob, [ClientUpdate(j.client_id, glob, 1) for j in jobs])
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    # replace-one: the sum of updates clipped to C moves by up to 2C, so the noise is z/2 sensitivities
    accountant.compose(dp_event.SampledWithoutReplacementDpEvent(10, 5, dp_event.GaussianDpEvent(0.5)), 3)
    assert metrics["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)
    assert metrics["dp_releases"] == 3 and 1 < metrics["dp_epsilon"] < 100


def test_local_mode_epsilon_has_no_sampling_amplification():
    strategy = dp(fedavg(10, 5), mode="local", noise_multiplier=4.0)
    glob = {"a": torch.zeros(2)}
    jobs = strategy.configure_train(1, glob)
    assert jobs[0].config == {"dp_clip": 1.0, "dp_noise": 4.0, "dp_noise_seed": 3}
    _, metrics = strategy.aggregate_train(1, glob, [ClientUpdate(j.client_id, glob, 1) for j in jobs])
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_event.GaussianDpEvent(2.0), 1)
    assert metrics["dp_epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


def test_target_epsilon_calibrates_the_noise_for_the_planned_rounds():
    strategy = dp(fedavg(10, 5), mode="local", noise_multiplier=None, target_epsilon=5.0, rounds=4)
    z = strategy.noise_multiplier
    assert strategy.epsilon(4) <= 5.0 < dp(fedavg(10, 5), mode="local", noise_multiplier=z - 0.01).epsilon(4)


def test_a_noise_that_exceeds_the_budget_is_refused_before_anything_runs():
    with pytest.raises(ConfigError, match=r"^--rounds 5: at --dp-noise-multiplier 1 that many rounds reach "
                                          r"epsilon .*, beyond the budget --dp-target-epsilon 1.0"):
        dp(fedavg(10, 10), noise_multiplier=1.0, target_epsilon=1.0)


def test_resume_with_more_rounds_than_the_budget_allows_is_refused():
    first = dp(fedavg(10, 10), mode="local", noise_multiplier=None, target_epsilon=3.0, rounds=4)
    glob = {"a": torch.zeros(2)}
    jobs = first.configure_train(1, glob)
    first.aggregate_train(1, glob, [ClientUpdate(j.client_id, glob, 1) for j in jobs])
    saved = first.state_dict()
    same = dp(fedavg(10, 10), mode="local", noise_multiplier=None, target_epsilon=3.0, rounds=4, noise_seed=None)
    same.load_state_dict(saved)                                          # the planned 4 rounds: fine
    assert same.noise_multiplier == first.noise_multiplier and same.releases == 1 and same.seed == 3
    longer = dp(fedavg(10, 10), mode="local", noise_multiplier=None, target_epsilon=3.0, rounds=8, noise_seed=None)
    with pytest.raises(ConfigError, match=r"^--rounds 8: at --dp-noise-multiplier .* \(calibrated when the run "
                                          r"started\) that many rounds reach epsilon .*, beyond the budget "
                                          r"--dp-target-epsilon 3.0"):
        longer.load_state_dict(saved)


def test_secret_seed_makes_sampling_unpredictable_from_the_config_seed():
    cfg = Config().override({"num_clients": 10, "clients_per_round": 3, "dp_clip": 1.0, "dp_noise_multiplier": 1.0})
    glob = {"a": torch.zeros(1)}

    def sampled(strategy):
        return [[j.client_id for j in strategy.configure_train(r, glob)] for r in range(1, 6)]

    plain = sampled(make_strategy("fedavg", num_clients=10, clients_per_round=3, seed=cfg.federation.seed))
    assert sampled(build_strategy(cfg, 10)) != plain
    fixed = cfg.override({"dp_noise_seed": 5})
    assert sampled(build_strategy(fixed, 10)) == plain                     # experiments: config seed samples


def test_pooled_mean_from_secure_aggregation_is_scaled_back_to_the_sum():
    glob = {"a": torch.zeros(2)}
    strategy = dp(fedavg(4, 4), clip=10.0, noise_multiplier=0.0)
    strategy.configure_train(1, glob)
    pooled = PooledUpdate(0, {"a": torch.tensor([1.0, 2.0])}, 30, {"train_loss": 1.0}, client_ids=[0, 1, 3],
                          weighting="equal")
    state, metrics = strategy.aggregate_train(1, glob, [pooled])           # 3 of 4 answered: sum / 4
    assert torch.allclose(state["a"], torch.tensor([0.75, 1.5])) and metrics["clients"] == [0, 1, 3]


@pytest.mark.parametrize("overrides,message", [
    ({"dp_noise_multiplier": 1.0}, "--dp-noise-multiplier: needs --dp-clip"),
    ({"dp_clip": 1.0}, "--dp-noise-multiplier: set it, or --dp-target-epsilon"),
    ({"dp_clip": -1.0}, "--dp-clip: must be positive"),
    ({"dp_clip": 1.0, "dp_noise_multiplier": 0.0, "dp_target_epsilon": 2.0}, "--dp-target-epsilon: cannot be met"),
    ({"dp_delta": 1.5}, "--dp-delta: must be in (0, 1)"),
    ({"dp_mode": "local"}, "--dp-mode: needs --dp-clip"),
    ({"secagg_threshold": 3}, "--secagg-threshold: needs --secure-aggregation"),
])
def test_privacy_flags_are_validated_with_their_name(overrides, message):
    with pytest.raises(ConfigError) as err:
        Config().override(overrides)
    assert str(err.value).startswith(message)


def test_dp_with_ffa_noises_and_releases_only_b():
    """Under --lora-aggregation ffa clients send only B: DP clips and noises B alone, A stays the seeded init."""
    a_key, b_key = "m.lora_A.weight", "m.lora_B.weight"
    glob = {a_key: torch.tensor([[1.0, 2.0]]), b_key: torch.tensor([[0.0], [0.0]])}
    inner = make_strategy("fedavg", num_clients=2, clients_per_round=2, seed=0, lora_aggregation="ffa")
    strategy = dp(inner, clip=1e9, noise_multiplier=0.0)
    jobs = strategy.configure_train(1, glob)
    assert all(set(j.state) == {b_key} for j in jobs)
    updates = [ClientUpdate(0, {b_key: torch.tensor([[2.0], [0.0]])}, 1),
               ClientUpdate(1, {b_key: torch.tensor([[0.0], [4.0]])}, 9)]
    state, _ = strategy.aggregate_train(1, glob, updates)
    assert torch.equal(state[a_key], glob[a_key])
    assert torch.allclose(state[b_key], torch.tensor([[1.0], [2.0]]))      # equal weights, fixed denominator 2


@pytest.mark.parametrize("flag, value", [("dp_clip", 1.0), ("secure_aggregation", True)])
def test_pooled_release_refuses_product_svd_and_uneven_adapters(flag, value):
    from fedit.server.build import check_methods

    base = Config().override({"num_clients": 4, "clients_per_round": 2, flag: value,
                              **({"dp_noise_multiplier": 1.0} if flag == "dp_clip" else {})})
    name = "--dp-clip" if flag == "dp_clip" else "--secure-aggregation"
    with pytest.raises(ConfigError, match=f"^{name} releases only the mean .* product-svd"):
        check_methods(base.override({"lora_aggregation": "product-svd"}))
    with pytest.raises(ConfigError, match=f"^{name} sums updates of one shape"):
        check_methods(base.override({"lora_aggregation": "zero-pad", "client_ranks": "8,4"}))
    check_methods(base.override({"lora_aggregation": "ffa"}))


@pytest.mark.parametrize("flag, value", [("dp_clip", 1.0), ("secure_aggregation", True)])
def test_pooled_release_refuses_scaffold(flag, value):
    from fedit.server.build import check_methods

    cfg = Config().override({"num_clients": 4, "clients_per_round": 2, flag: value, "strategy": "scaffold",
                             **({"dp_noise_multiplier": 1.0} if flag == "dp_clip" else {})})
    with pytest.raises(ConfigError, match="releases only the mean of the clients' updates, but --strategy scaffold"):
        check_methods(cfg)
