"""In-process simulation: one resident base model; clients trained one after another, or several
at once in shared passes over the base (``--concurrent-clients``, :mod:`fedit.client.multilora`,
the fused engine of :mod:`fedit.client.trainer`).

A thin runner: the round loop is :class:`fedit.runners.federation.Federation`; this module
only supplies its transport, :class:`InProcessClients`, which hands each job to
:func:`fedit.client.job.run_job` on the resident model. Adapters move as dicts of tensors in
memory; nothing is reloaded per client and nothing goes through disk except the per-round
checkpoint that makes ``--resume`` possible.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from fedit.attacks import AttackPlan, plan_attack, trigger_success
from fedit.client.batching import num_steps
from fedit.client.job import ClientJob, ClientState, ClientUpdate, job_train_config, run_job, run_jobs
from fedit.client.multilora import can_train_together, concurrency
from fedit.config import Config
from fedit.data import Example, write_partition_stats
from fedit.data.prompts import TokenizedExample
from fedit.data.fingerprint import data_fingerprint, with_absolute_paths
from fedit.errors import CheckpointError
from fedit.fileio import atomic_write_text
from fedit.model import AdapterState, adapter_config, model_origin, save_adapter
from fedit.progress import Progress
from fedit.provenance import provenance
from fedit.runners.common import (Workbench, build_workbench, clients_source, load_clients, load_test,
                                  no_examples_reason)
from fedit.runners.federation import ClientFailure, Federation, Reply
from fedit.runners.rundir import RunDir
from fedit.client_lora import layout_record
from fedit.model import check_client_targets
from fedit.runners.summary import run_card
from fedit.server import build_strategy, check_methods
from fedit.server.build import client_layouts

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    state: AdapterState
    history: list[dict[str, Any]]   # the round records, as in metrics.jsonl


class InProcessClients:
    """The simulation's transport: every job runs in this process on the resident model; each
    client's records are tokenized on first use and its client state is kept between rounds."""

    def __init__(self, bench: Workbench, clients: Sequence[list[Example]], cfg: Config,
                 progress: Progress, run_dir: RunDir | None = None, attack: AttackPlan | None = None) -> None:
        self.bench, self.clients, self.cfg, self.progress = bench, clients, cfg, progress
        self.run_dir = run_dir   # where every local step is logged (the --logger tracker)
        self.attack = attack     # simulated attackers (--attack), or None
        self._tokenized: dict[int, list[TokenizedExample]] = {}
        self.client_states: dict[int, ClientState] = {}

    def client_data(self, client_id: int) -> list[TokenizedExample]:
        if client_id not in self._tokenized:
            self._tokenized[client_id] = self.bench.tokenize(self.clients[client_id], self.cfg.data)
        return self._tokenized[client_id]

    def train(self, jobs: Sequence[ClientJob]) -> list[Reply]:
        replies: list[Reply] = []
        round_idx = jobs[0].round if jobs else 0
        width = concurrency(self.bench.trainer, self.cfg, [self.client_data(j.client_id) for j in jobs])
        with self.progress.task(f"round {round_idx} clients", len(jobs)) as bar:
            for start in range(0, len(jobs), width):
                chunk = [self.attacked(job) for job in jobs[start:start + width]]
                if len(chunk) > 1 and all(self.client_data(j.client_id) for j in chunk) \
                        and can_train_together(self.bench.trainer, chunk):
                    replies.extend(self.train_together(chunk))
                    bar.advance(len(chunk), loss=replies[-1].metrics["train_loss"])
                    continue
                for job in chunk:
                    replies.append(self.train_client(job))
                    bar.advance(**({"loss": replies[-1].metrics["train_loss"]}
                                   if isinstance(replies[-1], ClientUpdate) else {}))
        return replies

    def attacked(self, job: ClientJob) -> ClientJob:
        """The job as a simulated attacker runs it (its attack's training settings), else as is."""
        if self.attack is not None and job.client_id in self.attack.attackers and self.attack.job_config():
            return dataclasses.replace(job, config={**job.config, **self.attack.job_config()})
        return job

    def log_step(self) -> None:
        if self.run_dir is not None:
            info = self.bench.trainer.last_step
            self.run_dir.log_step(info.loss, info.lr, info.input_tokens, info.seconds)

    def train_together(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
        """Several clients in shared passes over the resident base (fedit.client.multilora)."""
        datas = [self.client_data(job.client_id) for job in jobs]
        total = sum(num_steps(len(d), t.batch_size, t.local_epochs, t.local_steps)
                    for d, t in ((d, job_train_config(self.cfg.train, j.config)) for d, j in zip(datas, jobs)))
        ids = ",".join(str(job.client_id) for job in jobs)

        with self.progress.task(f"clients {ids} steps (together)", total) as bar:
            def on_step(client_id: int, step: int, total: int, loss: float) -> None:
                bar.advance(loss=loss)
                self.log_step()

            results = run_jobs(self.bench.trainer, jobs, datas, self.cfg.train, seed=self.cfg.federation.seed,
                               client_states=self.client_states, on_step=on_step)
        for job, (update, state) in zip(jobs, results):
            if state:
                self.client_states[job.client_id] = state
        return [update for update, _ in results]

    def train_client(self, job: ClientJob) -> Reply:
        data = self.client_data(job.client_id)
        if not data:  # every record was skipped by tokenization (--max-len)
            return ClientFailure(job.client_id, no_examples_reason(job.client_id, len(self.clients[job.client_id]),
                                                                   self.cfg.data.max_len))
        train = job_train_config(self.cfg.train, job.config)
        total = num_steps(len(data), train.batch_size, train.local_epochs, train.local_steps)
        with self.progress.task(f"client {job.client_id} steps", total) as bar:
            def on_step(step: int, total: int, loss: float) -> None:
                bar.advance(loss=loss)
                self.log_step()

            update, state = run_job(self.bench.trainer, job, data, self.cfg.train, seed=self.cfg.federation.seed,
                                    client_state=self.client_states.get(job.client_id), on_step=on_step)
        if state:
            self.client_states[job.client_id] = state
        return update

    def state_dict(self) -> dict[str, Any]:
        return {"client_states": {str(k): v for k, v in self.client_states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.client_states = {int(k): v for k, v in state.get("client_states", {}).items()}


class Simulation:
    """setup() -> run rounds -> finish(); ``run()`` does all three."""

    def __init__(self, cfg: Config, out: str | Path, *, resume: bool = False,
                 progress: Progress | None = None, bench: Workbench | None = None) -> None:
        self.cfg = cfg
        self._bench = bench  # a resident model to reuse (experiments); built in setup() when None
        self.run_dir = RunDir(Path(out))
        self.resume = resume
        self.progress = progress or Progress()

    def setup(self) -> None:
        """Data, run directory checks, the strategy and the model first: a mistake in any of them
        stops the run before anything is written."""
        self.cfg = cfg = with_absolute_paths(self.cfg)   # config.yaml names the data wherever it runs
        check_methods(cfg)  # a combination of methods that makes no sense
        self.clients = load_clients(cfg)
        cfg.federation.clients_to_sample(len(self.clients), clients_source(cfg))  # --partition files: fewer
        layouts = client_layouts(cfg, len(self.clients))
        strategy = build_strategy(cfg, len(self.clients), layouts)  # refuses impossible method settings
        test = load_test(cfg)
        attack = plan_attack(cfg, len(self.clients))
        fingerprint = data_fingerprint(cfg)
        self.run_dir.check(cfg, self.resume, fingerprint)
        self.bench: Workbench = self._bench if self._bench is not None else build_workbench(cfg)
        check_client_targets(self.bench.model, [lay.targets for lay in layouts])
        self.origin = model_origin(cfg.model.model, self.bench.base.path)
        ckpt = self.run_dir.prepare(cfg, self.resume, fingerprint=fingerprint,
                                    provenance={**provenance(), "model": self.origin})
        self.run_dir.adapter_config = adapter_config(self.bench.model, self.bench.base.path)
        heterogeneous = cfg.lora.client_ranks is not None or cfg.lora.client_targets is not None
        write_partition_stats(self.clients, self.run_dir.path, layout_record(layouts) if heterogeneous else None)
        test_tok = self.bench.tokenize(test, cfg.data, train_on_prompt=False)
        if attack is not None:
            self.clients = attack.poison(self.clients)
            atomic_write_text(self.run_dir.path / "attack.json", json.dumps(attack.record(), indent=2) + "\n")
            logger.warning("simulated attack %s by clients %s", attack.attack, attack.attackers)
        self.transport = InProcessClients(self.bench, self.clients, cfg, self.progress, self.run_dir, attack)
        transport = self.transport
        if cfg.privacy.secure_aggregation:  # the round loop gets only the (quantised) sum, as from SecAgg+
            from fedit.privacy.secagg_transport import SimulatedSecureAggregation

            transport = SimulatedSecureAggregation(self.transport, cfg, [len(c) for c in self.clients])
        evaluate = self.bench.evaluator(test_tok, cfg.federation.eval_batch_size)
        if attack is not None and attack.attack == "backdoor" and evaluate is not None:
            evaluate = with_trigger_success(evaluate, self.bench, test, cfg)
        self.federation = Federation(cfg, strategy, transport, self.run_dir, evaluate=evaluate,
                                     progress=self.progress,
                                     known_examples={cid: len(c) for cid, c in enumerate(self.clients)})
        self.federation.start(self.bench.initial_state, ckpt)

    @property
    def state(self) -> AdapterState:
        """The current global adapter."""
        return self.federation.state

    def run_round(self, round_idx: int) -> dict[str, Any]:
        """One round of the loop (benchmarks step through rounds one by one)."""
        return self.federation.run_round(round_idx)

    def finish(self) -> RunResult:
        state = self.federation.state
        save_final(self.bench, state, self.run_dir, self.cfg, self.federation.history, self.origin)
        return RunResult(self.run_dir.path, state, self.federation.history)

    def run(self) -> RunResult:
        try:
            self.setup()
            self.federation.run()
            return self.finish()
        finally:  # loss.png and the tracker's files, also when the run stops early
            self.run_dir.close()


def save_final(bench: Workbench, state: AdapterState, run_dir: RunDir, cfg: Config,
               history: Sequence[dict[str, Any]], origin: dict[str, Any]) -> None:
    """``final/``: the adapter, the tokenizer and a model card (the simulation and the ServerApp)."""
    card = run_card(cfg, history, origin, run_dir.final_dir)
    try:
        save_adapter(bench.model, state, run_dir.final_dir, bench.base.path, tokenizer=bench.tokenizer, card=card)
    except Exception as exc:  # a full disk: the checkpoints still hold every round
        raise CheckpointError(f"cannot write the final adapter to {run_dir.final_dir} ({exc}); no data was lost: "
                              f"every round is checkpointed, write it with --resume once there is space"
                              .replace("\n", " ")) from None
    logger.info("final adapter written to %s", run_dir.final_dir)


def with_trigger_success(evaluate: Callable[[AdapterState], dict], bench: Workbench, test: Sequence[Example],
                         cfg: Config) -> Callable[[AdapterState], dict]:
    """Central evaluation plus the backdoor's trigger success rate on held-out prompts."""
    def both(state: AdapterState) -> dict:
        result = evaluate(state)  # leaves ``state`` in the resident model
        return {**result, "backdoor": trigger_success(bench, test, cfg.robustness, cfg.data.template)}
    return both


def run_simulation(cfg: Config, out: str | Path, *, resume: bool = False,
                   progress: Progress | None = None) -> RunResult:
    """Run (or resume) a federated job in this process; returns the final global adapter."""
    return Simulation(cfg, out, resume=resume, progress=progress).run()
