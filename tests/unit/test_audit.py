"""The privacy audit: its statistics on hand-computed cases, and the update attack on tiny-random,
where it must succeed (one client, a few records trained for many steps) and must fail (the same
update under local DP with a huge noise multiplier), so the attack is shown to measure something."""

from __future__ import annotations

import math

import pytest

from fedit.audit.run import Scorer
from fedit.audit.stats import clopper_pearson, epsilon_lower_bound, exposure, roc_auc, tpr_at_fpr
from fedit.audit.update_attack import update_attack
from fedit.audit.views import mechanism_name
from fedit.config import Config
from fedit.data import load_source
from fedit.runners.common import build_workbench


def test_auc_and_tpr_at_fpr_on_hand_made_scores():
    assert roc_auc([3, 4, 5], [1, 2, 3]) == pytest.approx(8.5 / 9)      # one tie counts one half
    assert roc_auc([1, 2], [1, 2]) == 0.5
    assert tpr_at_fpr([3, 4, 5], [1, 2, 3], 0.01) == pytest.approx(2 / 3)  # above every non-member: 4 and 5
    assert tpr_at_fpr(list(range(200)), list(range(100)), 0.01) == pytest.approx(101 / 200)  # above 98: 99 may pass


def test_clopper_pearson_and_the_epsilon_lower_bound():
    assert clopper_pearson(8, 8, 0.05) == pytest.approx((0.05 ** (1 / 8), 1.0))
    assert clopper_pearson(0, 8, 0.05) == pytest.approx((0.0, 1 - 0.05 ** (1 / 8)))
    # 8 of 8 members above every non-member: 2 thresholds, each bound at alpha = 0.05 / 8
    lo = 0.00625 ** (1 / 8)
    bound = epsilon_lower_bound([1.0] * 8, [0.0] * 8, 1e-5)
    assert bound["epsilon_lower_bound"] == pytest.approx(math.log((lo - 1e-5) / (1 - lo)))
    assert bound["tpr"] == 1.0 and bound["fpr"] == 0.0
    assert epsilon_lower_bound([0.0, 1.0] * 4, [0.0, 1.0] * 4, 1e-5)["epsilon_lower_bound"] == 0.0
    assert exposure(0.1, [1.0, 2.0, 3.0]) == 2.0 and exposure(5.0, [1.0, 2.0, 3.0]) == 0.0


@pytest.mark.parametrize("overrides,name", [
    ({}, "plain"),
    ({"dp_clip": 0.1, "dp_noise_multiplier": 1.0}, "clipped"),
    ({"dp_clip": "auto", "dp_noise_multiplier": 1.0}, "plain"),          # the clients send unclipped updates
    ({"dp_clip": 0.1, "dp_noise_multiplier": 1.0, "dp_mode": "local", "compress": "int8"}, "local-dp+int8"),
    ({"compress": "topk:0.1"}, "topk:0.1"),
    ({"secure_aggregation": True, "dp_clip": 0.1, "dp_noise_multiplier": 1.0}, "clipped+secure-sum"),
])
def test_the_server_view_of_each_mechanism(overrides, name):
    assert mechanism_name(Config().override(overrides)) == name


@pytest.fixture(scope="module")
def attacked(fixtures_dir):
    """One client (tiny/client_0.json): 7 of its 15 records trained on for 40 steps, 7 others held out (it memorizes them), its update attacked as is (plain) and under local DP with z = 10
    (what the server would see): both views of one training."""
    cfg = Config().override({"model": "tiny-random", "precision": "fp32", "data": str(fixtures_dir / "tiny"),
                             "partition": "files", "clients_per_round": 1, "local_steps": 40, "lr": 0.01,
                             "batch_size": 4, "micro_batch_size": 4, "max_len": 64, "dp_clip": 0.01,
                             "dp_noise_multiplier": 10.0, "dp_mode": "local", "dp_noise_seed": 1})
    bench = build_workbench(cfg)
    client, _ = load_source(str(fixtures_dir / "tiny" / "client_0.json"))
    return update_attack(bench.trainer, cfg, [client], bench.initial_state, 1, Scorer(bench, cfg),
                         lambda examples: bench.tokenize(examples, cfg.data), records=15, seed=0)


def test_update_attack_succeeds_on_a_memorizing_client(attacked):
    plain = attacked["views"]["plain"]
    assert attacked["members"] == 7 and attacked["non_members"] == 7 and plain["cohort"] == [0]
    assert plain["auc"] >= 0.9 and plain["tpr_at_1pct_fpr"] >= 0.5, plain


def test_update_attack_fails_under_local_dp_with_huge_noise(attacked):
    assert attacked["seen"] == "local-dp" and list(attacked["views"]) == ["plain", "local-dp"]
    noisy = attacked["views"]["local-dp"]
    assert abs(noisy["auc"] - 0.5) <= 0.2 and noisy["tpr_at_1pct_fpr"] <= 0.3, noisy


def test_dp_with_noise_multiplier_zero_is_infinite_not_no_dp(tmp_path):
    """metrics.jsonl holds z = 0's infinite epsilon as null: the audit said the run had no DP."""
    import json

    from fedit.audit.run import accountant_epsilon
    from fedit.cli.audit import summary_lines
    from fedit.runners.rundir import RunDir

    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "round", "round": 1, "dp_epsilon": None,
                                                        "dp_delta": 1e-5}) + "\n")
    acc = accountant_epsilon(RunDir(tmp_path))
    assert acc["infinite"] is True and acc["epsilon"] is None
    upd = {"target_client": 0, "members": 2, "non_members": 2, "views": {"plain": {"auc": 0.5, "tpr_at_1pct_fpr": 0}}}
    assert summary_lines({"update_attack": upd, "accountant": acc})[-1].startswith(
        "accountant's epsilon: infinite (DP with noise multiplier 0)")
