"""Seeds and intervals of `fedit experiment`: the paired (hierarchical) bootstrap, verdicts, the
per-seed run config and LoRA initialisation, and the fixed data split (--data-seed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedit.config import Config
from fedit.experiment.seeds import seed_config, seeded_initial_state
from fedit.experiment.stats import mean_sd, paired_bootstrap, verdict


def _arr(values, den=None):
    values = np.asarray(values, float)
    return values, np.ones(len(values)) if den is None else np.asarray(den, float)


def test_mean_sd():
    assert mean_sd([1.0, 2.0, 4.0]) == (pytest.approx(7 / 3), pytest.approx(np.sqrt(7 / 3)))
    assert mean_sd([2.5]) == (2.5, None)


def test_constant_shift_gives_a_point_interval():
    # the system is 0.5 above its reference on every record: every resample sees exactly +0.5
    ref = _arr([0.1, 0.4, 0.2, 0.9])
    iv = paired_bootstrap([_arr(ref[0] + 0.5)], [ref], resamples=500)
    assert (iv.estimate, iv.low, iv.high) == (pytest.approx(0.5), pytest.approx(0.5), pytest.approx(0.5))
    assert verdict(iv, higher_is_better=True) == "better" and verdict(iv, higher_is_better=False) == "worse"


def test_identical_systems_are_a_tie_and_noise_is_not_a_win():
    same = _arr([0.0] * 6)
    assert verdict(paired_bootstrap([same], [same]), higher_is_better=True) == "tie"
    x = _arr([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    r = _arr([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])      # same mean, opposite records: pure noise
    iv = paired_bootstrap([x], [r], resamples=1000)
    assert iv.estimate == 0.0 and iv.low < 0 < iv.high
    assert verdict(iv, higher_is_better=True) == "within noise"


def test_ratio_of_sums_and_ratio_mode():
    # loss-like metric: sum(loss sums) / sum(tokens) = 30/10 vs 20/10 -> difference 1.0, ratio 1.5
    x, r = _arr([10.0, 20.0], [5, 5]), _arr([8.0, 12.0], [5, 5])
    assert paired_bootstrap([x], [r], resamples=200).estimate == pytest.approx(1.0)
    assert paired_bootstrap([x], [r], ratio=True, resamples=200).estimate == pytest.approx(1.5)


def test_seeds_widen_the_interval_and_a_single_reference_is_shared():
    ref = _arr(np.linspace(0, 1, 20))
    seeds = [_arr(ref[0] + d) for d in (0.05, 0.25, -0.1)]          # training noise across seeds
    one = paired_bootstrap(seeds[:1], [ref], resamples=2000)
    three = paired_bootstrap(seeds, [ref], resamples=2000)          # one reference run, paired with each seed
    assert one.low == pytest.approx(0.05) and one.high == pytest.approx(0.05)
    assert three.estimate == pytest.approx((0.05 + 0.25 - 0.1) / 3)
    assert three.seeds == 3 and three.low == pytest.approx(-0.1) and three.high == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same records: 3 vs 20"):
        paired_bootstrap([_arr([1, 2, 3])], [ref])


def test_seed_config_keeps_the_data_split_unless_asked():
    cfg = Config().override({"seed": 7})
    assert seed_config(cfg, 0, False, 7) is cfg
    fixed, varied = seed_config(cfg, 2, False, 7), seed_config(cfg, 2, True, 7)
    assert (fixed.federation.seed, fixed.data.data_seed) == (9, 7)
    assert (varied.federation.seed, varied.data.data_seed) == (9, 9)


def test_seeded_initial_state():
    ref = {"m.lora_A.weight": torch.zeros(4, 16), "m.lora_B.weight": torch.ones(8, 4)}
    state = torch.get_rng_state()
    a, b, a2 = (seeded_initial_state(ref, s) for s in (1, 2, 1))
    assert torch.equal(torch.get_rng_state(), state)                  # the global RNG is not touched
    assert torch.equal(a["m.lora_A.weight"], a2["m.lora_A.weight"])
    assert not torch.equal(a["m.lora_A.weight"], b["m.lora_A.weight"])
    assert a["m.lora_A.weight"].abs().max() <= 0.25                    # U(-1/sqrt(16), 1/sqrt(16))
    assert torch.equal(a["m.lora_B.weight"], torch.zeros(8, 4))


def test_data_seed_fixes_the_partition_while_the_seed_varies(fixtures_dir):
    from fedit.runners.common import load_clients, load_test

    def split(**kw):
        cfg = Config().override({"data": str(fixtures_dir / "tiny"), "test_data": str(fixtures_dir / "tiny_test.jsonl"),
                                 "partition": "iid", "num_clients": 3, "clients_per_round": 2,
                                 "max_test_records": 5, **kw})
        return load_clients(cfg), load_test(cfg)

    base = split(seed=1)
    assert split(seed=2, data_seed=1) == base          # same data split under another training seed
    assert split(seed=2) != base                       # the default: the split follows --seed
