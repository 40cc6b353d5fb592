"""Issue 19.7: the resolved config reaches every tracker as hyperparameters (TensorBoard hparams read
back with tensorboard's own reader; MLflow params and W&B config through doubles of their module API,
because mlflow and wandb are not installed here: the doubles record the calls fedit makes)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from fedit.config import Config
from fedit.runners import loggers
from fedit.runners.loggers import config_hparams, open_logger


def cfg(name: str) -> Config:
    return Config().override({"model": "tiny-random", "logger": name, "lr": 2e-4, "rounds": 7})


def hparams_of(folder: Path) -> tuple[dict, list[str]]:
    """(hparam values, metric tags) the TensorBoard HParams dashboard reads from a run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(folder))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
              for k, v in start.session_start_info.hparams.items()}
    return values, [m.name.tag for m in exp.experiment.metric_infos]


def test_tensorboard_gets_the_config_as_hparams(tmp_path):
    pytest.importorskip("tensorboard")
    run = open_logger(cfg("tensorboard"), tmp_path, [])
    run.close()
    values, metrics = hparams_of(tmp_path / "tensorboard" / "rounds")
    assert values["lr"] == pytest.approx(2e-4) and values["rounds"] == 7 and values["model"] == "tiny-random"
    assert values["logger"] == "tensorboard" and set(values) == set(cfg("tensorboard").flat())
    assert metrics == ["eval/loss", "eval/perplexity"]


class FakeMlflow:
    """The part of mlflow's API fedit uses: MlflowClient and mlflow.entities.Param/Metric."""

    def __init__(self):
        self.params: dict[str, dict[str, str]] = {}
        fake = self

        class Client:
            def __init__(self, tracking_uri):
                self.uri = tracking_uri

            def get_experiment_by_name(self, name):
                return None

            def create_experiment(self, name):
                return "0"

            def create_run(self, exp_id, run_name):
                fake.params[run_name] = {}
                return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_name))

            def log_batch(self, run_id, metrics=(), params=()):
                for p in params:
                    assert p.key not in fake.params[run_id], f"mlflow refuses to log param {p.key} twice"
                    fake.params[run_id][p.key] = p.value

            def get_run(self, run_id):
                return types.SimpleNamespace(data=types.SimpleNamespace(params=dict(fake.params[run_id])))

            def set_terminated(self, run_id):
                pass

        self.module = types.ModuleType("mlflow")
        self.module.MlflowClient = Client
        entities = types.ModuleType("mlflow.entities")
        entities.Param = lambda key, value: types.SimpleNamespace(key=key, value=value)
        entities.Metric = lambda key, value, timestamp, step: types.SimpleNamespace(key=key, value=value)
        self.entities = entities


def test_mlflow_params_through_a_double_of_its_api(tmp_path, monkeypatch):
    fake = FakeMlflow()
    monkeypatch.setitem(sys.modules, "mlflow", fake.module)
    monkeypatch.setitem(sys.modules, "mlflow.entities", fake.entities)
    monkeypatch.setattr(loggers, "installed", lambda name: True)
    run = open_logger(cfg("mlflow"), tmp_path, [])
    run.hparams({"system": "local-1", "lr": 9.0}, ["system/loss"], axis="system")   # an experiment's system
    run.close()
    params = fake.params[tmp_path.name]
    assert params["lr"] == "0.0002" and params["rounds"] == "7" and params["system"] == "local-1"
    assert set(params) == set(cfg("mlflow").flat()) | {"system"}


def test_wandb_config_through_a_double_of_its_api(tmp_path, monkeypatch):
    seen: dict = {}

    class Run:
        def __init__(self, config):
            self.config = types.SimpleNamespace(update=lambda values, allow_val_change: seen.update(values))
            seen.update(config)

        def define_metric(self, *args, **kwargs):
            pass

        def finish(self):
            seen["finished"] = True

    wandb = types.ModuleType("wandb")
    wandb.Settings = lambda **kw: kw
    wandb.init = lambda **kw: Run({k: v for section in kw["config"].values() for k, v in section.items()})
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    monkeypatch.setattr(loggers, "installed", lambda name: True)
    run = open_logger(cfg("wandb"), tmp_path, [])
    run.hparams({"system": "fedit"}, ["system/loss"], axis="system")
    run.close()
    assert seen["system"] == "fedit" and seen["rounds"] == 7 and seen["lr"] == pytest.approx(2e-4)
    assert seen["finished"] and config_hparams(cfg("wandb")).items() <= seen.items()
