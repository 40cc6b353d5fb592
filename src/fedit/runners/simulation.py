"""In-process simulation: one resident base model; clients trained one after another, or several
at once in shared passes over the base (``--concurrent-clients``, :mod:`fedit.client.multilora`,
the fused engine of :mod:`fedit.client.trainer`).

A thin runner: the set-up is :class:`fedit.runners.session.Session` and the round loop
:class:`fedit.runners.federation.Federation`; this module supplies only where the clients come
from (a partition of ``--data``) and the loop's transport, :class:`InProcessClients`, which hands
each job to :func:`fedit.client.job.run_job` on the resident model. Adapters move as dicts of tensors in
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
from fedit.client_lora import layout_record
from fedit.config import Config
from fedit.data import Example, write_partition_stats
from fedit.data.prompts import TokenizedExample
from fedit.fileio import atomic_write_text
from fedit.model import AdapterState
from fedit.privacy.canaries import insert_canaries
from fedit.privacy.secagg_transport import SimulatedSecureAggregation
from fedit.progress import Progress
from fedit.data.client_test import split_record
from fedit.runners.common import Workbench, clients_source, data_seed, load_client_split, no_examples_reason
from fedit.runners.federation import ClientFailure, EvaluateFn, Reply, Transport
from fedit.runners.personal import finetuner, personal_states, write_personal
from fedit.runners.rundir import RunDir
from fedit.runners.session import Roster, Session

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

    def log_step(self, client_id: int) -> None:
        if self.run_dir is not None:
            info = self.bench.trainer.last_step
            self.run_dir.log_step(info.loss, info.lr, info.input_tokens, info.seconds, client_id)

    def train_together(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
        """Several clients in shared passes over the resident base (fedit.client.multilora)."""
        datas = [self.client_data(job.client_id) for job in jobs]
        total = sum(num_steps(len(d), t.batch_size, t.local_epochs, t.local_steps)
                    for d, t in ((d, job_train_config(self.cfg.train, j.config)) for d, j in zip(datas, jobs)))
        ids = ",".join(str(job.client_id) for job in jobs)

        with self.progress.task(f"clients {ids} steps (together)", total) as bar:
            def on_step(client_id: int, step: int, total: int, loss: float) -> None:
                bar.advance(loss=loss)
                self.log_step(client_id)

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
                self.log_step(job.client_id)

            update, state = run_job(self.bench.trainer, job, data, self.cfg.train, seed=self.cfg.federation.seed,
                                    client_state=self.client_states.get(job.client_id), on_step=on_step)
        if state:
            self.client_states[job.client_id] = state
        return update

    def state_dict(self) -> dict[str, Any]:
        return {"client_states": {str(k): v for k, v in self.client_states.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.client_states = {int(k): v for k, v in state.get("client_states", {}).items()}


class Simulation(Session):
    """The run set-up of :class:`fedit.runners.session.Session` with the clients of a partition of
    ``--data``, trained in this process; ``run()`` returns the final global adapter."""

    def early_clients(self, cfg: Config) -> Roster:
        self.clients, self.client_tests, self.test_indices = load_client_split(cfg)
        return Roster(len(self.clients), clients_source(cfg),
                      known_examples={cid: len(c) for cid, c in enumerate(self.clients)})

    def prepared(self, cfg: Config) -> None:
        heterogeneous = cfg.lora.client_ranks is not None or cfg.lora.client_targets is not None
        record = layout_record(self.roster.layouts) if heterogeneous else None
        write_partition_stats(self.clients, self.run_dir.path, record)
        if cfg.data.client_test_fraction is not None:  # the per-client held-out split, recorded
            atomic_write_text(self.run_dir.path / "client_test.json", json.dumps(split_record(
                cfg.data.client_test_fraction, data_seed(cfg), self.client_tests, self.test_indices)) + "\n")

    def make_transport(self, cfg: Config, roster: Roster) -> Transport:
        self.attack = attack = plan_attack(cfg, len(self.clients))
        if attack is not None:
            self.clients = attack.poison(self.clients)
            atomic_write_text(self.run_dir.path / "attack.json", json.dumps(attack.record(), indent=2) + "\n")
            logger.warning("simulated attack %s by clients %s", attack.attack, attack.attackers)
        if cfg.privacy.audit_canaries:  # secret records for `fedit audit` (canaries.json)
            self.clients = insert_canaries(self.clients, cfg.privacy.audit_canaries, cfg.privacy.audit_repeats,
                                           cfg.federation.seed, self.run_dir.path)
        self.transport = InProcessClients(self.bench, self.clients, cfg, self.progress, self.run_dir, attack)
        if cfg.privacy.secure_aggregation:  # the round loop gets only the (quantised) sum, as from SecAgg+
            return SimulatedSecureAggregation(self.transport, cfg, [len(c) for c in self.clients])
        return self.transport

    def make_evaluator(self, evaluate: EvaluateFn | None, test: Sequence[Example]) -> EvaluateFn | None:
        if self.attack is not None and self.attack.attack == "backdoor" and evaluate is not None:
            return with_trigger_success(evaluate, self.bench, test, self.cfg)
        return evaluate

    def finish(self) -> RunResult:
        super().finish()
        if self.cfg.personalization.personalization != "none":  # RUN/personal/client_NNN
            tune = finetuner(self.bench.trainer, self.cfg, self.federation.state, self.transport.client_data)
            states = personal_states(self.cfg, self.federation.state, self.transport.client_states,
                                     len(self.clients), tune)
            write_personal(self.run_dir.path, self.cfg, self.run_dir.adapter_config, states)
        return RunResult(self.run_dir.path, self.federation.state, self.federation.history)


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
