"""--logger: the scalars a run's records become, the step axis, and the MLflow / wandb backends
read back through their own clients or files (optional packages: skipped when absent)."""

import math

import pytest

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.runners import loggers
from fedit.runners.loggers import RunLogger, open_logger, round_scalars

ROUND = {"type": "round", "round": 2, "clients": [0, 1], "num_examples": 30, "train_loss": 1.5,
         "lora_gap_mean": 0.25, "dropped": ["client 3: no reply"], "seconds": 4.0, "bytes_up": 1024,
         "lr": 1e-3, "flag": True, "privacy": {"epsilon": 3.0, "note": "x"},
         "eval": {"overall": {"loss": 2.0, "perplexity": math.exp(2.0), "tokens": 10, "examples": 2},
                  "per_category": {"open_qa": {"loss": 1.0}, "summarization": {"loss": float("nan")}}}}
CLIENT = {"type": "client", "round": 2, "client": 1, "num_examples": 15, "train_loss": 1.25, "steps": 3,
          "seconds": 2.0}


def test_round_record_scalars_by_hand():
    assert round_scalars(ROUND) == {
        "eval/loss": 2.0, "eval/perplexity": math.exp(2.0), "eval/open_qa/loss": 1.0,
        "round/num_examples": 30.0, "round/train_loss": 1.5, "round/lora_gap_mean": 0.25,
        "round/seconds": 4.0, "round/bytes_up": 1024.0, "round/lr": 1e-3, "round/privacy/epsilon": 3.0,
        "round/dropped": 1.0}


class Recorder:
    def __init__(self):
        self.calls, self.closed = [], False

    def scalars(self, axis, step, values):
        self.calls.append((axis, step, values))

    def hparams(self, params, metrics, axis="round"):
        self.calls.append(("hparams", params, tuple(metrics), axis))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_step_axis_counts_local_steps_and_client_records_stand_in_without_them():
    flower = RunLogger(backend := Recorder(), steps_done=4)   # resumed after 4 steps
    flower.record(CLIENT)
    assert backend.calls == [("step", 7, {"client/num_examples": 15.0, "client/train_loss": 1.25,
                                          "client/steps": 3.0, "client/seconds": 2.0, "clients/1/loss": 1.25})]
    sim = RunLogger(backend := Recorder())
    sim.step(loss=2.0, lr=1e-3, input_tokens=100, seconds=0.5, client=3)
    sim.step(loss=1.0, lr=5e-4, input_tokens=50, seconds=0.0, client=1)
    sim.record(CLIENT)                                          # its steps were logged one by one
    sim.record(ROUND)
    sim.close()
    assert backend.calls[:2] == [("step", 1, {"train/loss": 2.0, "train/lr": 1e-3, "train/tokens_per_s": 200.0,
                                              "clients/3/loss": 2.0}),
                                 ("step", 2, {"train/loss": 1.0, "train/lr": 5e-4, "clients/1/loss": 1.0})]
    assert backend.calls[2][:2] == ("round", 2) and len(backend.calls) == 3 and backend.closed


def cfg(name):
    return Config().override({"model": "tiny-random", "logger": name})


def test_a_missing_package_is_a_one_line_error(monkeypatch):
    monkeypatch.setattr(loggers, "installed", lambda name: False)
    with pytest.raises(ConfigError, match=r"^--logger mlflow: the package is not installed \(pip install 'fedit\[mlflow\]'\)$"):
        open_logger(cfg("mlflow"), None, [])
    assert loggers.resolve_logger("auto") == "none"
    assert open_logger(cfg("none"), None, []) is None


def test_mlflow_run_read_back_and_reopened_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = open_logger(cfg("mlflow"), tmp_path, [])
    run.record(ROUND)
    run.close()
    again = open_logger(cfg("mlflow"), tmp_path, [ROUND])      # --resume: the same MLflow run
    assert again.backend.run_id == run.backend.run_id
    again.record({**ROUND, "round": 3, "train_loss": 1.0})
    again.close()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    history = client.get_metric_history(run.backend.run_id, "round/train_loss")
    assert [(m.step, m.value) for m in history] == [(2, 1.5), (3, 1.0)]
    assert client.get_run(run.backend.run_id).data.params["logger"] == "mlflow"


def test_wandb_offline_run_files(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = open_logger(cfg("wandb"), tmp_path, [])
    run.record(ROUND)
    run.step(loss=2.0, lr=1e-3, input_tokens=10, seconds=1.0)
    run.close()
    wandb.teardown()   # the wandb-core service writes the run file; wait for it to finish
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    files = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    data = files[0].read_bytes()
    assert b"eval/open_qa/loss" in data and b"train/tokens_per_s" in data
