"""Learning-rate schedules across the federation: hand-computed values, the server wrapper
(jobs carry the lr, the horizon is checkpointed) and the client following a per-step schedule."""

import math

import pytest
import torch

from fedit.client.job import ClientJob, ClientUpdate, run_job
from fedit.config import Config, DataConfig, TrainConfig
from fedit.errors import ConfigError
from fedit.data import load_examples
from fedit.schedules import lr_at, round_lr, step_lr
from fedit.server import build_strategy
from fedit.server.scheduled import ScheduledLR

C1 = 0.5 * (1 + math.cos(math.pi / 4))   # 0.8535533905932737
C3 = 0.5 * (1 + math.cos(3 * math.pi / 4))  # 0.14644660940672627


def test_schedule_values_by_hand():
    assert [lr_at(1.0, "cosine", p, 4) for p in range(4)] == pytest.approx([1.0, C1, 0.5, C3], abs=1e-15)
    assert [lr_at(1.0, "linear", p, 4) for p in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_at(2.0, "constant", p, 4) for p in range(4)] == [2.0] * 4
    # warmup 2 of 6 steps: 1/3, 2/3, then the decay over the remaining 4 steps
    assert [lr_at(1.0, "cosine", p, 6, 2) for p in range(6)] == pytest.approx([1 / 3, 2 / 3, 1.0, C1, 0.5, C3])
    assert [lr_at(1.0, "constant", p, 6, 2) for p in range(4)] == pytest.approx([1 / 3, 2 / 3, 1.0, 1.0])
    assert lr_at(1.0, "cosine", 9, 4) == pytest.approx(0.0, abs=1e-15)   # past the end: the last value
    assert lr_at(1.0, "linear", 9, 4) == 0.0
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cos'"):
        lr_at(1.0, "cos", 0, 4)


def test_round_and_step_positions():
    # OpenFedLLM: 0.5 * lr * (1 + cos(pi * round0 / R)) with 0-based rounds
    assert [round_lr(1e-3, "cosine", r, 4) for r in (1, 2, 3, 4)] == pytest.approx(
        [1e-3, 1e-3 * C1, 5e-4, 1e-3 * C3])
    # step unit: round 2 of 2, 2 steps per round -> positions 2 and 3 of 4
    assert [step_lr(1.0, "linear", 2, 2, s, 2) for s in (0, 1)] == [0.5, 0.25]


def cfg(**kw):
    return Config().override({"model": "tiny-random", "num_clients": 3, "clients_per_round": 2, "rounds": 4,
                              "lr": 1e-3, **kw})


def test_constant_schedule_adds_no_wrapper_and_no_keys():
    strategy = build_strategy(cfg(), 3)
    assert not isinstance(strategy, ScheduledLR)
    assert all(job.config == {} for job in strategy.configure_train(1, {}))


def test_round_unit_puts_the_round_lr_into_every_job_and_the_round_record():
    strategy = build_strategy(cfg(lr_schedule="cosine"), 3)
    assert isinstance(strategy, ScheduledLR)
    for round_idx, expected in zip((1, 2, 3, 4), (1e-3, 1e-3 * C1, 5e-4, 1e-3 * C3)):
        jobs = strategy.configure_train(round_idx, {})
        assert [j.config for j in jobs] == [{"lr": pytest.approx(expected)}] * 2
        updates = [ClientUpdate(j.client_id, {"k": torch.ones(1)}, 1, {"train_loss": 1.0}) for j in jobs]
        _, metrics = strategy.aggregate_train(round_idx, {"k": torch.zeros(1)}, updates)
        assert metrics["lr"] == pytest.approx(expected)


def test_step_unit_names_the_schedule_and_the_horizon_is_server_state():
    strategy = build_strategy(cfg(lr_schedule="linear", lr_schedule_unit="step", warmup_steps=3), 3)
    job = strategy.configure_train(1, {})[0]
    assert job.config == {"lr": 1e-3, "lr_schedule": "linear", "lr_warmup_steps": 3, "lr_total_rounds": 4}
    saved = strategy.state_dict()
    assert saved["lr_schedule"] == {"horizon": 4}
    extended = build_strategy(cfg(lr_schedule="linear", lr_schedule_unit="step", warmup_steps=3, rounds=8), 3)
    extended.load_state_dict(saved)          # --resume --rounds 8 keeps the horizon the run started with
    assert extended.configure_train(5, {})[0].config["lr_total_rounds"] == 4


def test_invalid_schedule_settings_name_the_flag():
    with pytest.raises(ConfigError, match="^--lr-schedule: 'cos' is not one of constant, cosine, linear$"):
        TrainConfig(lr_schedule="cos")
    with pytest.raises(ConfigError, match="^--warmup-steps: must be >= 0, got -1$"):
        TrainConfig(warmup_steps=-1)


@pytest.fixture(scope="module")
def data(tiny_bench, fixtures_dir):
    examples, _ = load_examples(fixtures_dir / "tiny" / "client_0.json")
    return tiny_bench.tokenize(examples, DataConfig(max_len=128))


def test_client_follows_the_per_step_schedule(tiny_bench, data):
    train = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=2)
    seen = []
    config = {"lr": 1e-3, "lr_schedule": "linear", "lr_warmup_steps": 0, "lr_total_rounds": 2}
    job = ClientJob(0, 2, tiny_bench.initial_state, config)
    update, _ = run_job(tiny_bench.trainer, job, data, train, seed=1,
                        on_step=lambda s, t, loss: seen.append(tiny_bench.trainer.last_step.lr))
    assert seen == pytest.approx([5e-4, 2.5e-4])      # positions 2 and 3 of 4
    assert update.metrics["lr"] == pytest.approx(2.5e-4)
    info = tiny_bench.trainer.last_step
    assert info.step == info.total == 2 and info.input_tokens > 0 and info.seconds > 0


def test_zero_lr_schedule_leaves_the_adapter_unchanged(tiny_bench, data):
    train = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=2, local_steps=2)
    job = ClientJob(0, 3, tiny_bench.initial_state, {"lr": 1e-3, "lr_schedule": "linear", "lr_total_rounds": 2})
    update, _ = run_job(tiny_bench.trainer, job, data, train, seed=1)   # past the end: lr 0
    assert all(torch.equal(update.state[k], tiny_bench.initial_state[k]) for k in update.state)
    with pytest.raises(ConfigError, match="^client config lr_schedule: 'cos' is not one of"):
        run_job(tiny_bench.trainer, ClientJob(0, 1, tiny_bench.initial_state, {"lr": 1.0, "lr_schedule": "cos"}),
                data, train, seed=1)
