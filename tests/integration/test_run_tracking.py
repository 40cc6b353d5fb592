"""`fedit run` with a learning-rate schedule and the TensorBoard logger on tiny-random: the event
files read back with tensorboard's own reader, loss.png, and a crash + --resume that stays bit
for bit identical to an uninterrupted run (the schedule is server state) with no duplicate events."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fedit.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def run_args(fixtures_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--model", "tiny-random", "--precision", "fp32", "--data", str(fixtures_dir / "tiny"),
            "--test-data", str(fixtures_dir / "tiny_test.jsonl"), "--partition", "files",
            "--clients-per-round", "2", "--local-steps", "2", "--batch-size", "4", "--micro-batch-size", "2",
            "--max-len", "128", "--lr", "1e-3", "--rounds", "3", "--logger", "tensorboard", "--out", str(out),
            *extra]


def events(out: Path, axis: str) -> EventAccumulator:
    acc = EventAccumulator(str(out / "tensorboard" / axis))
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def rounds(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["type"] == "round"]


# cosine per local step with 3 warmup steps: each client takes 2 steps x 3 rounds = 6 schedule steps;
# positions 0-2 warm up (1/4, 2/4, 3/4 of the peak), 3-5 decay as 0.5 * (1 + cos(pi * k / 3)) = 1, 3/4, 1/4
SCHEDULE = ("--lr-schedule", "cosine", "--lr-schedule-unit", "step", "--warmup-steps", "3")
# x 1e-3, two clients per round trained together (tiny-random): their steps alternate in the log
STEP_LRS = [0.25, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 0.75, 0.75, 0.25, 0.25]


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory, fixtures_dir):
    out = tmp_path_factory.mktemp("runs") / "cosine"
    assert main(run_args(fixtures_dir, out, *SCHEDULE)) == 0
    return out


def test_tensorboard_events_match_metrics_jsonl(cosine_run):
    recs = rounds(cosine_run)
    acc = events(cosine_run, "rounds")
    assert scalars(acc, "eval/loss") == [(r["round"], pytest.approx(r["eval"]["overall"]["loss"], rel=1e-6))
                                         for r in recs]
    assert scalars(acc, "round/train_loss") == [(r["round"], pytest.approx(r["train_loss"], rel=1e-6))
                                                for r in recs[1:]]
    category = next(iter(recs[-1]["eval"]["per_category"]))
    assert scalars(acc, f"eval/{category}/loss")[-1][1] == pytest.approx(
        recs[-1]["eval"]["per_category"][category]["loss"], rel=1e-6)
    assert [s for s, _ in scalars(acc, "round/lora_gap_mean")] == [1, 2, 3]
    assert scalars(acc, "round/dropped") == [(1, 0.0), (2, 0.0), (3, 0.0)]
    steps = events(cosine_run, "steps")
    loss = scalars(steps, "train/loss")
    assert [s for s, _ in loss] == list(range(1, 13))           # 3 rounds x 2 clients x 2 steps
    assert all(math.isfinite(v) for _, v in loss)
    assert [v for _, v in scalars(steps, "train/lr")] == pytest.approx([1e-3 * v for v in STEP_LRS])
    assert all(v > 0 for _, v in scalars(steps, "train/tokens_per_s"))


def test_loss_png_is_drawn(cosine_run):
    assert (cosine_run / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_with_a_per_step_schedule_is_bit_identical(cosine_run, fixtures_dir, tmp_path, crash_after_round):
    full = cosine_run
    out = tmp_path / "crashed"
    with crash_after_round(2):
        assert main(run_args(fixtures_dir, out, *SCHEDULE)) == 130
    assert main(["run", "--out", str(out), "--resume"]) == 0
    a, b = load_file(str(full / "final" / "adapter_model.safetensors")), \
        load_file(str(out / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the interrupted session's events after round 1 were purged: every round and step once
    assert [s for s, _ in scalars(events(out, "rounds"), "eval/loss")] == [0, 1, 2, 3]
    resumed, whole = scalars(events(out, "steps"), "train/lr"), scalars(events(full, "steps"), "train/lr")
    assert [s for s, _ in resumed] == list(range(1, 13))
    assert resumed == whole


def test_per_client_loss_and_config_hparams_in_tensorboard(cosine_run):
    """Issue 19.7: each client's step losses on a curve of its own, the config as hparams."""
    steps = events(cosine_run, "steps")
    per_client = {tag: scalars(steps, tag) for tag in steps.Tags()["scalars"] if tag.startswith("clients/")}
    assert sorted(per_client) == ["clients/0/loss", "clients/1/loss", "clients/2/loss"]
    merged = sorted(p for points in per_client.values() for p in points)
    assert merged == sorted(scalars(steps, "train/loss"))      # every step once, under the client that took it
    content = events(cosine_run, "rounds").PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(content)
    assert b"lr_schedule" in content["_hparams_/session_start_info"] and b"cosine" in content[
        "_hparams_/session_start_info"]


@pytest.mark.parametrize("command", ["run", "experiment"])
def test_a_missing_logger_is_refused_before_data_model_or_folder(command, fixtures_dir, tmp_path, monkeypatch,
                                                                 capsys):
    """Issue 19.7: a missing mlflow was found only after the data and the model were loaded, and left
    a half-made run folder."""
    from fedit.runners import common, loggers, session
    from fedit.experiment import runner

    def no_model(cfg):
        raise AssertionError("the model was loaded before the logger was checked")

    monkeypatch.setattr(loggers, "installed", lambda name: name == "tensorboard")
    for module in (common, session, runner):
        monkeypatch.setattr(module, "build_workbench", no_model)
    out = tmp_path / "out"
    args = run_args(fixtures_dir, out, "--logger", "mlflow")
    args[0] = command
    assert main(args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fedit {command}: error: --logger mlflow: the package is not installed (pip install 'fedit[mlflow]')")
    assert not out.exists()
