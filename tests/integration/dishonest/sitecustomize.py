"""Test helper, never installed: makes chosen ClientApps dishonest in a real loopback deployment.

Put this folder on PYTHONPATH and set FEDIT_TEST_DISHONEST="CLIENT:WHAT,..." (WHAT: ``metric`` sends
train_loss = [1.0, 2.0], ``count`` claims 10**12 examples). Python imports ``sitecustomize`` at
start-up, in every Flower process; once ``fedit.runners.flower.client_app`` is imported, its
``update_content`` (looked up at call time by the ``train`` handler) is wrapped to tamper with the
reply of the chosen clients, exactly as a node altering only its own reply would.
"""

import importlib.abc
import importlib.machinery
import os
import sys

TARGET = "fedit.runners.flower.client_app"
PLAN = dict(item.split(":") for item in os.environ.get("FEDIT_TEST_DISHONEST", "").split(",") if item)


def _patch(module):
    honest = module.update_content

    def dishonest(update):
        content = honest(update)
        what = PLAN.get(str(update.client_id))
        if what:
            from flwr.app import MetricRecord

            metrics = dict(content["metrics"])
            if what == "metric":
                metrics["train_loss"] = [1.0, 2.0]
            elif what == "count":
                metrics["num-examples"] = 10**12
            content["metrics"] = MetricRecord(metrics)
        return content

    module.update_content = dishonest


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if PLAN:
    sys.meta_path.insert(0, _Finder())
