"""Test helper, never installed: makes chosen ClientApps dishonest in a real loopback deployment.

Put this folder on PYTHONPATH and set FEDIT_TEST_DISHONEST="CLIENT:WHAT,..." (WHAT: ``metric`` sends
train_loss = [1.0, 2.0], ``inf`` sends train_loss = inf, ``count`` claims 10**12 examples,
``index=K`` answers the roll call with client-index K, ``roll-call-count`` with 10**12 records,
``die=STAGE`` kills its SuperNode when the SecAgg+ stage STAGE (setup, share_keys,
collect_masked_vectors, unmask) reaches it). Python imports ``sitecustomize`` at start-up, in every Flower process; once ``fedit.runners.flower.client_app`` is
imported, its ``update_content`` and ``ConfigRecord`` (looked up at call time by the ``train`` and
``query`` handlers) and Flower's ``secaggplus_mod`` are wrapped to tamper with the chosen clients'
replies, exactly as a node altering only its own replies would. CLIENT is the node's client-index.
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
            elif what == "inf":
                metrics["train_loss"] = float("inf")
            elif what == "count":
                metrics["num-examples"] = 10**12
            content["metrics"] = MetricRecord(metrics)
        return content

    module.update_content = dishonest
    real_record = module.ConfigRecord

    def roll_call_record(answer):  # the query handler's answer: {"client-index": its own index, ...}
        what = PLAN.get(str(answer.get("client-index"))) or ""
        if what.startswith("index="):
            answer = {**answer, "client-index": int(what.split("=")[1])}
        elif what == "roll-call-count":
            answer = {**answer, "num-examples": 10**12}
        return real_record(answer)

    module.ConfigRecord = roll_call_record
    import flwr.client.mod as mods

    real_mod = mods.secaggplus_mod

    def dying_mod(msg, ctxt, call_next):
        stage = msg.content.config_records["secaggplus_configs"]["stage"]
        if PLAN.get(str(ctxt.node_config.get("client-index"))) == f"die={stage}":
            _kill_node()
        return real_mod(msg, ctxt, call_next)

    mods.secaggplus_mod = dying_mod


def _kill_node():
    """SIGKILL this ClientApp's SuperNode (its nearest flower-supernode ancestor), then exit."""
    import psutil

    proc = psutil.Process()
    while proc is not None and "flower-supernode" not in " ".join(proc.cmdline()):
        proc = proc.parent()
    if proc is not None:
        proc.kill()
    os._exit(1)


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
