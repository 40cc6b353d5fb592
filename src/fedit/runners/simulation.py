"""In-process simulation: one resident base model; clients trained one after another, or several
at once in shared passes over the base (``--concurrent-clients``, :mod:`fedit.client.multilora`).

A thin runner: the round loop is :class:`fedit.runners.federation.Federation`; this module
only supplies its transport, :class:`InProcessClients`, which hands each job to
:func:`fedit.client.job.run_job` on the resident model. Adapters move as dicts of tensors in
memory; nothing is reloaded per client and nothing goes through disk except the per-round
checkpoint that makes ``--resume`` possible.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from fedit.client.batching import num_steps
from fedit.client.job import ClientJob, ClientState, ClientUpdate, job_train_config, run_job
from fedit.client.multilora import can_train_together, concurrency, run_jobs
from fedit.config import Config
from fedit.data import Example, write_partition_stats
from fedit.data.prompts import TokenizedExample
from fedit.model import AdapterState, save_adapter
from fedit.progress import Progress
from fedit.runners.common import Workbench, build_workbench, load_clients, load_test
from fedit.runners.federation import Federation, Reply
from fedit.runners.rundir import RunDir
from fedit.server import build_strategy

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
                 progress: Progress) -> None:
        self.bench, self.clients, self.cfg, self.progress = bench, clients, cfg, progress
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
                chunk = list(jobs[start:start + width])
                if len(chunk) > 1 and can_train_together(self.bench.trainer, chunk):
                    replies.extend(self.train_together(chunk))
                    bar.advance(len(chunk), loss=replies[-1].metrics["train_loss"])
                    continue
                for job in chunk:
                    replies.append(self.train_client(job))
                    bar.advance(loss=replies[-1].metrics["train_loss"])
        return replies

    def train_together(self, jobs: Sequence[ClientJob]) -> list[ClientUpdate]:
        """Several clients in shared passes over the resident base (fedit.client.multilora)."""
        datas = [self.client_data(job.client_id) for job in jobs]
        total = sum(num_steps(len(d), t.batch_size, t.local_epochs, t.local_steps)
                    for d, t in ((d, job_train_config(self.cfg.train, j.config)) for d, j in zip(datas, jobs)))
        ids = ",".join(str(job.client_id) for job in jobs)
        with self.progress.task(f"clients {ids} steps (together)", total) as bar:
            results = run_jobs(self.bench.trainer, jobs, datas, self.cfg.train, seed=self.cfg.federation.seed,
                               client_states=self.client_states,
                               on_step=lambda cid, step, total, loss: bar.advance(loss=loss))
        for job, (update, state) in zip(jobs, results):
            if state:
                self.client_states[job.client_id] = state
        return [update for update, _ in results]

    def train_client(self, job: ClientJob) -> ClientUpdate:
        data = self.client_data(job.client_id)
        train = job_train_config(self.cfg.train, job.config)
        total = num_steps(len(data), train.batch_size, train.local_epochs, train.local_steps)
        with self.progress.task(f"client {job.client_id} steps", total) as bar:
            update, state = run_job(self.bench.trainer, job, data, self.cfg.train, seed=self.cfg.federation.seed,
                                    client_state=self.client_states.get(job.client_id),
                                    on_step=lambda step, total, loss: bar.advance(loss=loss))
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
        cfg = self.cfg
        self.clients = load_clients(cfg)  # validates the data before anything is written
        cfg.federation.clients_to_sample(len(self.clients))  # e.g. --partition files: fewer files
        test = load_test(cfg)
        ckpt = self.run_dir.prepare(cfg, self.resume)
        write_partition_stats(self.clients, self.run_dir.path)
        self.bench: Workbench = self._bench if self._bench is not None else build_workbench(cfg)
        test_tok = self.bench.tokenize(test, cfg.data, train_on_prompt=False)
        self.transport = InProcessClients(self.bench, self.clients, cfg, self.progress)
        self.federation = Federation(cfg, build_strategy(cfg, len(self.clients)), self.transport, self.run_dir,
                                     evaluate=self.bench.evaluator(test_tok, cfg.federation.eval_batch_size),
                                     progress=self.progress)
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
        save_adapter(self.bench.model, state, self.run_dir.final_dir, self.bench.base.path)
        logger.info("final adapter written to %s", self.run_dir.final_dir)
        return RunResult(self.run_dir.path, state, self.federation.history)

    def run(self) -> RunResult:
        self.setup()
        self.federation.run()
        return self.finish()


def run_simulation(cfg: Config, out: str | Path, *, resume: bool = False,
                   progress: Progress | None = None) -> RunResult:
    """Run (or resume) a federated job in this process; returns the final global adapter."""
    return Simulation(cfg, out, resume=resume, progress=progress).run()
