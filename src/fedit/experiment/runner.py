"""``fedit experiment``: base vs local-only vs centralized vs FedIT on one partition, one seed and
one held-out set, with one resident model whose adapter is swapped in memory between systems.

Layout of ``--out``::

    experiment.json            the run config every system was made with (reruns must match)
    systems/NAME/result.json   a finished system: its spec, training and evaluation (the marker)
    systems/NAME/adapter/      its PEFT adapter (fedit: systems/fedit is a whole `fedit run` dir)
    judge/                     cached judge verdicts, one file per pair
    results.json, report.md, report.html, *.png

A rerun on the same ``--out`` reuses every system whose result.json matches its spec and the
evaluation settings, re-evaluates a system whose adapter exists but whose evaluation settings
changed, and resumes a half-finished fedit run from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fedit.client.job import ClientJob, run_job
from fedit.config import Config, flag
from fedit.errors import ConfigError
from fedit.experiment.evaluate import GEN_BATCH, evaluate_system, generation_subset
from fedit.experiment.settings import ExperimentSettings
from fedit.experiment.systems import (SystemSpec, budget_rule, choose_local_clients, plan_systems,
                                      spec_record)
from fedit.experiment.tracking import ExperimentProgress, units
from fedit.model import AdapterState, load_adapter_state, save_adapter
from fedit.progress import Progress
from fedit.fileio import atomic_write_text
from fedit.runners.common import build_workbench, ensure_dir, load_clients, load_test
from fedit.runners.simulation import Simulation

logger = logging.getLogger(__name__)

RESULT = "result.json"


class Experiment:
    """setup() -> run_system() for each selected system -> collect(); ``run()`` does all three."""

    def __init__(self, cfg: Config, settings: ExperimentSettings, out: str | Path,
                 progress: Progress | None = None) -> None:
        self.cfg, self.settings, self.out = cfg, settings, Path(out)
        self.progress = progress or Progress()

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        if cfg.data.test_data is None:
            raise ConfigError("--test-data: an experiment needs held-out data to compare systems on")
        self._claim_out_dir()
        self.clients = load_clients(cfg)
        self.test = load_test(cfg)
        self.bench = build_workbench(cfg)
        self.client_tok = [self.bench.tokenize(c, cfg.data) for c in self.clients]
        self.test_tok = self.bench.tokenize(self.test, cfg.data, train_on_prompt=False)
        self.local_clients = choose_local_clients(self.clients, self.settings.local_baselines)
        if len(self.local_clients) < self.settings.local_baselines:
            logger.warning("only %d non-empty clients: %d local baselines instead of %d", len(self.local_clients),
                           len(self.local_clients), self.settings.local_baselines)
        self.specs = plan_systems(cfg, [len(t) for t in self.client_tok], self.local_clients,
                                  self.settings.local_budget)
        self.gen_idx = generation_subset(self.test, self.settings.gen_records, cfg.federation.seed)
        for spec in self.specs:
            logger.info("system %s: %s", spec.name, spec.describe())

    def _claim_out_dir(self) -> None:
        marker = self.out / "experiment.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())["config"]
            _check_same_config(saved, self.cfg.to_dict(), marker)
        elif self.out.exists() and any(self.out.iterdir()):
            raise ConfigError(f"--out: {self.out} exists, is not empty and holds no fedit experiment; "
                              "choose another --out")
        (self.out / "systems").mkdir(parents=True, exist_ok=True)
        atomic_write_text(marker, json.dumps({"config": self.cfg.to_dict()}, indent=2) + "\n")

    # -- systems -----------------------------------------------------------------------------
    def system_dir(self, name: str) -> Path:
        return self.out / "systems" / name

    def cached(self, spec: SystemSpec) -> dict[str, Any] | None:
        """The stored result of ``spec`` if it was made with the same spec and evaluation settings."""
        path = self.system_dir(spec.name) / RESULT
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        if result.get("spec") != spec_record(spec):
            return None
        if result.get("eval_settings") != self.settings.eval_record():
            return None
        return result

    def run_system(self, spec: SystemSpec, tracker: ExperimentProgress) -> dict[str, Any]:
        """Train (or reload) one system, evaluate it and store its result.json."""
        start = time.perf_counter()
        ensure_dir(self.system_dir(spec.name))
        state, train, loss = self._trained_state(spec, tracker)
        gen_unit = units(gen_batches=1, max_new_tokens=self.settings.max_new_tokens)
        with tracker.phase(f"{spec.name} generation", self._eval_batches(), scale=gen_unit) as bar:
            result = evaluate_system(self.bench, state, self.test_tok, self.test, self.gen_idx,
                                     template=self.cfg.data.template,
                                     eval_batch_size=self.cfg.federation.eval_batch_size,
                                     max_new_tokens=self.settings.max_new_tokens,
                                     em_categories=self.settings.em_categories, loss=loss,
                                     on_batch=lambda: bar.advance())
        tracker.skip(self._loss_units() * (self.cfg.federation.rounds + 1 if spec.kind == "fedit" else 1))
        result = {"spec": spec_record(spec), "eval_settings": self.settings.eval_record(),
                  "train": train, "seconds": time.perf_counter() - start, **result}
        atomic_write_text(self.system_dir(spec.name) / RESULT, json.dumps(result, indent=1, default=float) + "\n")
        o = result["overall"]
        logger.info("%s: held-out loss %.4f, ppl %.2f, ROUGE-L %.4f (%.0f s)", spec.name, o["loss"],
                    o["perplexity"], o.get("rouge_l", float("nan")), result["seconds"])
        return result

    def _eval_batches(self) -> int:
        return -(-len(self.gen_idx) // GEN_BATCH)

    def _loss_units(self) -> float:
        return units(loss_batches=-(-len(self.test_tok) // self.cfg.federation.eval_batch_size))

    def _trained_state(self, spec: SystemSpec, tracker: ExperimentProgress
                       ) -> tuple[AdapterState, dict[str, Any], dict[str, Any] | None]:
        """(adapter state, training record, loss figures if already known)."""
        if spec.kind == "base":
            return self.bench.initial_state, {"steps": 0}, None
        if spec.kind == "fedit":
            return self._run_fedit(spec, tracker)
        adapter_dir = self.system_dir(spec.name) / "adapter"
        stored = self.system_dir(spec.name) / "train.json"
        if adapter_dir.is_dir() and stored.is_file():
            train = json.loads(stored.read_text())
            if train.get("spec") == spec_record(spec):
                logger.info("%s: reusing the trained adapter in %s", spec.name, adapter_dir)
                tracker.skip(spec.steps)
                return load_adapter_state(adapter_dir), train, None
        examples = self.client_tok[spec.client] if spec.kind == "local" else \
            [ex for part in self.client_tok for ex in part]
        client_id = spec.client if spec.kind == "local" else len(self.clients)  # centralized: its own id
        job = ClientJob(client_id, 0, self.bench.initial_state, {"local_steps": spec.steps})
        with tracker.phase(f"{spec.name} steps", spec.steps) as bar:
            update, _ = run_job(self.bench.trainer, job, examples, self.cfg.train, seed=self.cfg.federation.seed,
                                on_step=lambda step, total, loss: bar.advance(loss=loss))
        train = {"spec": spec_record(spec), "examples": len(examples), **update.metrics}
        save_adapter(self.bench.model, update.state, adapter_dir, self.bench.base.path)
        atomic_write_text(stored, json.dumps(train, indent=1, default=float) + "\n")
        return update.state, train, None

    def _run_fedit(self, spec: SystemSpec, tracker: ExperimentProgress):
        run = Simulation(self.cfg, self.system_dir(spec.name), resume=True, progress=tracker.forwarding(),
                         bench=self.bench).run()
        last = run.history[-1] if run.history else {}
        train = {"rounds": self.cfg.federation.rounds, "steps": spec.steps,
                 "train_loss": last.get("train_loss"),
                 "communication_mb": (last.get("bytes_down_total", 0) + last.get("bytes_up_total", 0)) / 1e6}
        return run.state, train, last.get("eval") or None

    # -- whole experiment ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.setup()
        names = [s.name for s in self.specs]
        todo = [s for s in self.specs if s.name in self.settings.selected(names)]
        results: dict[str, dict[str, Any]] = {}
        pending = []
        for spec in todo:
            hit = self.cached(spec)
            if hit is not None:
                logger.info("%s: finished earlier, reusing %s", spec.name, self.system_dir(spec.name) / RESULT)
                results[spec.name] = hit
            else:
                pending.append(spec)
        tracker = ExperimentProgress(self.progress, self._work_estimate(pending))
        with tracker:
            for spec in pending:
                results[spec.name] = self.run_system(spec, tracker)
        return self.collect(results)

    def _work_estimate(self, specs: list[SystemSpec]) -> float:
        """Work units of the pending systems: training steps, generation and loss passes (fedit:
        one per round and one before training); see fedit.experiment.tracking.units."""
        gen = units(gen_batches=self._eval_batches(), max_new_tokens=self.settings.max_new_tokens)
        loss_passes = sum(self.cfg.federation.rounds + 1 if s.kind == "fedit" else 1 for s in specs)
        return sum(s.steps for s in specs if s.kind != "base") + len(specs) * gen + loss_passes * self._loss_units()

    def collect(self, fresh: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Every finished system in --out (this run's and earlier ones'), in report order."""
        systems = {}
        for spec in self.specs:
            result = fresh.get(spec.name) or self.cached(spec)
            if result is not None:
                systems[spec.name] = result
        return {"systems": systems, "settings": self.settings_record(),
                "local_clients": {s.name: s.client for s in self.specs if s.kind == "local"}}

    def settings_record(self) -> dict[str, Any]:
        s = self.settings
        return {"config": self.cfg.to_dict(), "local_baselines": s.local_baselines,
                "local_budget": s.local_budget, "budget_rule": budget_rule(s.local_budget),
                "systems": [spec_record(x) for x in self.specs],
                "generation": {**s.eval_record(), "batch_size": GEN_BATCH, "records": len(self.gen_idx),
                               "test_indices": self.gen_idx},
                "test_records": len(self.test), "test_examples_scored": len(self.test_tok),
                "local_mix": {x.name: dict(Counter(e.category for e in self.clients[x.client]).most_common())
                              for x in self.specs if x.kind == "local"}}


def _check_same_config(saved: dict[str, Any], new: dict[str, Any], origin: Path) -> None:
    for section, values in saved.items():
        for key, value in values.items():
            if new.get(section, {}).get(key) != value:
                raise ConfigError(f"--out: {origin} was made with {flag(key)} {value!r}, not "
                                  f"{new[section][key]!r}; use the same settings or choose another --out")


def run_experiment(cfg: Config, settings: ExperimentSettings, out: str | Path, *,
                   progress: Progress | None = None, judge=None) -> dict[str, Any]:
    """Run (or resume) an experiment and write its report; returns a short summary.

    ``judge``: a :class:`fedit.experiment.judge.Judge` to use instead of one built from
    ``settings.judge`` (tests).
    """
    from fedit.data import partition_stats
    from fedit.experiment.judging import judge_systems
    from fedit.experiment.report import write_report

    exp = Experiment(cfg, settings, out, progress)
    results = exp.run()
    if settings.judge is not None or judge is not None:
        results["judge"] = judge_systems(exp, results["systems"], judge, exp.progress)
    files = write_report(results, exp.out, partition_stats(exp.clients), exp.test, settings.examples)
    logger.info("report written to %s", files["html"])
    return {"out": str(exp.out), "report": str(files["html"]), "claims": results["claims"],
            "systems": {n: {k: r["overall"].get(k) for k in ("loss", "perplexity", "rouge_l")}
                        for n, r in results["systems"].items()}}
