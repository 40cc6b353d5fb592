"""``fedit experiment``: base vs local-only vs centralized vs FedIT on one partition and one
held-out set, for one or more training seeds, with one resident model whose adapter is swapped in
memory between systems.

Layout of ``--out``::

    experiment.json                 the run config every system was made with (reruns must match)
    systems/NAME/result.json        a finished system of the first seed: spec, training, evaluation
    systems/NAME/adapter/           its PEFT adapter (fedit: systems/fedit is a whole `fedit run` dir)
    systems/seed-N/NAME/            the same for the later seeds of --seeds
    judge/, judge.jsonl             cached verdicts per pair; every judge request and reply
    results.json, report.md, report.html, *.png

A rerun on the same ``--out`` reuses every system whose result.json matches its spec and the
evaluation settings, re-evaluates a system whose adapter exists but whose evaluation settings
changed, and resumes a half-finished fedit run from its last checkpoint. Systems not selected by
``--systems`` stay in the report as they are; those evaluated with other settings than this run's
are listed as such and left out of the text-metric comparisons (their held-out loss does not
depend on those settings and is still compared).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.experiment.evaluate import GEN_BATCH, evaluate_system, generation_subset
from fedit.experiment.seeds import SeedPlan, seed_config, seeded_initial_state, split_owners
from fedit.experiment.settings import ExperimentSettings, check_same_config
from fedit.experiment.systems import SystemSpec, budget_rule, choose_local_clients, plan_systems, spec_record
from fedit.experiment.tracking import ExperimentProgress, track_system, units
from fedit.experiment.training import fedit_training, train_baseline
from fedit.fileio import atomic_write_text, remove_stale_temporaries
from fedit.model import AdapterState, model_origin
from fedit.progress import Progress
from fedit.provenance import provenance
from fedit.runners.common import build_workbench, data_seed, ensure_dir, load_clients, load_test
from fedit.runners.loggers import resolve_logger
from fedit.runners.simulation import Simulation
from fedit.server import check_methods

logger = logging.getLogger(__name__)

RESULT = "result.json"


class Experiment:
    """setup() -> run_system() for each selected system and seed -> collect(); ``run()`` does all three."""

    def __init__(self, cfg: Config, settings: ExperimentSettings, out: str | Path,
                 progress: Progress | None = None) -> None:
        self.cfg, self.settings, self.out = cfg, settings, Path(out)
        self.progress = progress or Progress()

    # -- setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.cfg.data.test_data is None:
            raise ConfigError("--test-data: an experiment needs held-out data to compare systems on")
        check_methods(self.cfg)
        resolve_logger(self.cfg.federation.logger)   # a --logger that is not installed: before anything is written
        self._claim_out_dir()
        self.bench = build_workbench(self.cfg)
        splits: dict[int, tuple] = {}
        self.plans = [self._plan(i, seed_config(self.cfg, i, self.settings.vary_partition, data_seed(self.cfg)),
                                 splits) for i in range(self.settings.seeds)]
        self.base_seeds = split_owners(self.plans)
        for spec in self.specs:
            logger.info("system %s: %s", spec.name, spec.describe())

    def _plan(self, index: int, cfg: Config, splits: dict[int, tuple]) -> SeedPlan:
        key = data_seed(cfg)
        if key not in splits:
            clients, test = load_clients(cfg), load_test(cfg)
            local = choose_local_clients(clients, self.settings.local_baselines)
            if len(local) < self.settings.local_baselines:
                logger.warning("only %d non-empty clients: %d local baselines instead of %d", len(local),
                               len(local), self.settings.local_baselines)
            splits[key] = (clients, test, [self.bench.tokenize(c, cfg.data) for c in clients],
                           self.bench.tokenize(test, cfg.data, train_on_prompt=False), local)
        clients, test, client_tok, test_tok, local = splits[key]
        specs = plan_systems(cfg, [len(t) for t in client_tok], local, self.settings.local_budget)
        init = self.bench.initial_state if index == 0 else seeded_initial_state(self.bench.initial_state,
                                                                                 cfg.federation.seed)
        return SeedPlan(index, cfg, clients, test, client_tok, test_tok, local, specs,
                        generation_subset(test, self.settings.gen_records, key), init)

    def _claim_out_dir(self) -> None:
        marker = self.out / "experiment.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())["config"]
            check_same_config(saved, self.cfg.to_dict(), marker)
        elif self.out.exists() and any(self.out.iterdir()):
            raise ConfigError(f"--out: {self.out} exists, is not empty and holds no fedit experiment; "
                              "choose another --out")
        (self.out / "systems").mkdir(parents=True, exist_ok=True)
        for folder in (self.out, *(p for p in (self.out / "systems").iterdir() if p.is_dir())):
            remove_stale_temporaries(folder)  # what an interrupted write left
        atomic_write_text(marker, json.dumps({"config": self.cfg.to_dict()}, indent=2) + "\n")

    # The first seed's view (the judge, the example answers and the partition figure use it).
    @property
    def first(self) -> SeedPlan:
        return self.plans[0]

    @property
    def specs(self) -> list[SystemSpec]:
        return self.first.specs

    @property
    def clients(self):
        return self.first.clients

    @property
    def test(self):
        return self.first.test

    @property
    def gen_idx(self) -> list[int]:
        return self.first.gen_idx

    # -- systems -----------------------------------------------------------------------------
    def system_dir(self, name: str, plan: SeedPlan | None = None) -> Path:
        return (plan or self.first).folder(self.out) / name

    def finished(self, plan: SeedPlan, spec: SystemSpec) -> dict[str, Any] | None:
        """The stored result of ``spec`` (whatever its evaluation settings), or None."""
        path = self.system_dir(spec.name, plan) / RESULT
        if not path.is_file():
            return None
        result = json.loads(path.read_text())
        return result if result.get("spec") == spec_record(spec) else None

    def cached(self, plan: SeedPlan, spec: SystemSpec) -> dict[str, Any] | None:
        """The stored result of ``spec`` if it was made with the current evaluation settings and
        holds the per-record figures the intervals need (older ones are re-evaluated, not retrained)."""
        result = self.finished(plan, spec)
        if result is None or "records" not in result:
            return None
        return result if result.get("eval_settings") == self.settings.eval_record() else None

    def run_system(self, plan: SeedPlan, spec: SystemSpec, tracker: ExperimentProgress) -> dict[str, Any]:
        """Train (or reload) one system of one seed, evaluate it and store its result.json."""
        start = time.perf_counter()
        ensure_dir(self.system_dir(spec.name, plan))
        state, train = self._trained_state(plan, spec, tracker)
        eval_start = time.perf_counter()
        gen_unit = units(gen_batches=1, max_new_tokens=self.settings.max_new_tokens)
        with tracker.phase(f"{spec.name} generation", self._gen_batches(plan), scale=gen_unit) as bar:
            result = evaluate_system(self.bench, state, plan.test_tok, plan.test, plan.gen_idx,
                                     template=plan.cfg.data.template,
                                     eval_batch_size=plan.cfg.federation.eval_batch_size,
                                     max_new_tokens=self.settings.max_new_tokens,
                                     em_categories=self.settings.em_categories, on_batch=lambda: bar.advance())
        tracker.skip(self._loss_units(plan))
        now = time.perf_counter()
        result = {"spec": spec_record(spec), "eval_settings": self.settings.eval_record(), "seed": plan.seed,
                  "train": train, "seconds": now - start, "eval_seconds": now - eval_start, **result}
        atomic_write_text(self.system_dir(spec.name, plan) / RESULT,
                          json.dumps(result, indent=1, default=float) + "\n")
        track_system(plan.cfg, self.system_dir(spec.name, plan), spec, plan.seed, result)
        o = result["overall"]
        logger.info("%s (seed %d): held-out loss %.4f, ppl %.2f, ROUGE-L %.4f (%.0f s)", spec.name, plan.seed,
                    o["loss"], o["perplexity"], o.get("rouge_l", float("nan")), result["seconds"])
        return result

    def _gen_batches(self, plan: SeedPlan) -> int:
        return -(-len(plan.gen_idx) // GEN_BATCH)

    def _loss_units(self, plan: SeedPlan) -> float:
        return units(loss_batches=-(-len(plan.test_tok) // plan.cfg.federation.eval_batch_size))

    def _trained_state(self, plan: SeedPlan, spec: SystemSpec, tracker: ExperimentProgress
                       ) -> tuple[AdapterState, dict[str, Any]]:
        """(adapter state, training record)."""
        folder = self.system_dir(spec.name, plan)
        if spec.kind == "base":
            return plan.initial_state, {"steps": 0, "tokens": 0, "seconds": 0.0}
        if spec.kind == "fedit":
            bench = dataclasses.replace(self.bench, initial_state=plan.initial_state)
            run = Simulation(plan.cfg, folder, resume=True, progress=tracker.forwarding(), bench=bench).run()
            return run.state, fedit_training(folder / "metrics.jsonl", plan.cfg.federation.rounds, spec.steps)
        return train_baseline(self.bench, plan, spec, folder, tracker)

    # -- whole experiment ---------------------------------------------------------------------
    def work(self) -> list[tuple[SeedPlan, SystemSpec]]:
        """Every (seed, system) the selected systems stand for; base once per data split."""
        names = [s.name for s in self.specs]
        selected = set(self.settings.selected(names))
        return [(p, s) for p in self.plans for s in p.specs if s.name in selected
                and (s.kind != "base" or p.index in self.base_seeds)]

    def run(self) -> dict[str, Any]:
        self.setup()
        fresh: dict[tuple[int, str], dict[str, Any]] = {}
        pending = []
        for plan, spec in self.work():
            hit = self.cached(plan, spec)
            if hit is not None:
                logger.info("%s (seed %d): finished earlier, reusing it", spec.name, plan.seed)
                fresh[plan.index, spec.name] = hit
            else:
                pending.append((plan, spec))
        with ExperimentProgress(self.progress, self._work_estimate(pending)) as tracker:
            for plan, spec in pending:
                fresh[plan.index, spec.name] = self.run_system(plan, spec, tracker)
        return self.collect(fresh)

    def _work_estimate(self, pending: list[tuple[SeedPlan, SystemSpec]]) -> float:
        """Work units of the pending systems: training steps, generation and loss passes (fedit:
        one per round and one before training); see fedit.experiment.tracking.units."""
        total = 0.0
        for plan, s in pending:
            passes = plan.cfg.federation.rounds + 2 if s.kind == "fedit" else 1
            total += (s.steps if s.kind != "base" else 0) + passes * self._loss_units(plan) + units(
                gen_batches=self._gen_batches(plan), max_new_tokens=self.settings.max_new_tokens)
        return total

    def collect(self, fresh: dict[tuple[int, str], dict[str, Any]]) -> dict[str, Any]:
        """Every finished system in --out (this run's and earlier ones', every seed), in report order;
        those evaluated with other settings than this run's are listed under ``stale``."""
        runs: dict[str, dict[str, dict[str, Any]]] = {}
        stale: dict[str, dict[str, Any]] = {}
        current = self.settings.eval_record()
        for plan in self.plans:
            for spec in plan.specs:
                if spec.kind == "base" and plan.index not in self.base_seeds:
                    continue
                result = fresh.get((plan.index, spec.name)) or self.finished(plan, spec)
                if result is None:
                    continue
                result.setdefault("seed", plan.seed)
                runs.setdefault(spec.name, {})[str(plan.seed)] = result
                if result.get("eval_settings") != current:
                    stale.setdefault(spec.name, result.get("eval_settings") or {})
        order = [s.name for s in self.specs] + [n for n in runs if n not in {s.name for s in self.specs}]
        runs = {n: runs[n] for n in order if n in runs}
        first = str(self.first.seed)
        if stale:
            logger.warning("evaluated with other settings than this run's (kept, marked in the report; rerun "
                           "them with --systems to re-evaluate): %s", ", ".join(stale))
        return {"systems": {n: r[first] for n, r in runs.items() if first in r}, "runs": runs, "stale": stale,
                "seeds": [p.seed for p in self.plans], "settings": self.settings_record(),
                "local_clients": {s.name: s.client for s in self.specs if s.kind == "local"},
                "provenance": {**provenance(), "model": model_origin(self.cfg.model.model, self.bench.base.path)}}

    def settings_record(self) -> dict[str, Any]:
        s = self.settings
        return {"config": self.cfg.to_dict(), "local_baselines": s.local_baselines,
                "local_budget": s.local_budget, "budget_rule": budget_rule(s.local_budget),
                "systems": [spec_record(x) for x in self.specs],
                "generation": {**s.eval_record(), "batch_size": GEN_BATCH, "records": len(self.gen_idx),
                               "test_indices": self.gen_idx},
                "seeds": {"count": s.seeds, "values": [p.seed for p in self.plans],
                          "vary_partition": s.vary_partition, "data_seeds": [data_seed(p.cfg) for p in self.plans]},
                "bootstrap": {"resamples": s.bootstrap, "confidence": s.confidence},
                "test_records": len(self.test), "test_examples_scored": len(self.first.test_tok),
                "local_mix": {x.name: dict(Counter(e.category for e in self.clients[x.client]).most_common())
                              for x in self.specs if x.kind == "local"}}


def run_experiment(cfg: Config, settings: ExperimentSettings, out: str | Path, *,
                   progress: Progress | None = None, judge=None) -> dict[str, Any]:
    """Run (or resume) an experiment and write its report; returns a short summary.

    ``judge``: a :class:`fedit.experiment.judge.Judge` to use instead of one built from
    ``settings.judge`` (tests). A judge that fails (a fatal HTTP error, an unreachable endpoint)
    or produces no verdict at all still leaves the report of everything else, then raises.
    """
    from fedit.data import partition_stats
    from fedit.experiment.judge_client import JudgeError
    from fedit.experiment.judging import judge_systems, no_verdicts
    from fedit.experiment.report import write_report
    from fedit.provenance import provenance

    exp = Experiment(cfg, settings, out, progress)
    results = exp.run()
    results.setdefault("provenance", provenance())
    error: JudgeError | None = None
    if settings.judge is not None or judge is not None:
        try:
            results["judge"] = judge_systems(exp, results, judge, exp.progress)
        except JudgeError as exc:
            error = exc
    files = write_report(results, exp.out, partition_stats(exp.clients), exp.test, settings.examples)
    logger.info("report written to %s", files["html"])
    if error is not None:
        raise error
    if results.get("judge") and no_verdicts(results["judge"]):
        raise JudgeError(f"--judge-url: the judge produced no valid verdict ({no_verdicts(results['judge'])}); "
                         f"no relative-score chart was drawn; the rest of the report is in {files['html']}")
    return {"out": str(exp.out), "report": str(files["html"]), "claims": results["claims"],
            "systems": {n: {k: r["overall"].get(k) for k in ("loss", "perplexity", "rouge_l")}
                        for n, r in results["systems"].items()}}
