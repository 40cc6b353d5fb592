"""In-process simulation: one resident base model, clients trained one after another.

A thin runner around the federated algorithm: the strategy picks clients and aggregates,
``LocalTrainer.fit`` is the client update, adapters move between them as dicts of tensors in
memory. Nothing is reloaded per client and nothing goes through disk except the per-round
checkpoint that makes ``--resume`` possible.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.client.batching import num_steps
from fedit.config import Config
from fedit.data import write_partition_stats
from fedit.data.prompts import TokenizedExample
from fedit.model import AdapterState, save_adapter
from fedit.progress import Progress
from fedit.runners.common import Workbench, build_workbench, close_round, load_clients, load_test, round_summary
from fedit.runners.rundir import RunDir
from fedit.server import filter_updates, make_strategy

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    state: AdapterState
    history: list[dict[str, Any]]   # the round records, as in metrics.jsonl


class Simulation:
    """setup() -> run_round() for each round -> finish(); ``run()`` does all three."""

    def __init__(self, cfg: Config, out: str | Path, *, resume: bool = False,
                 progress: Progress | None = None, bench: Workbench | None = None) -> None:
        self.cfg = cfg
        self._bench = bench  # a resident model to reuse (experiments); built in setup() when None
        self.run_dir = RunDir(Path(out))
        self.resume = resume
        self.progress = progress or Progress()
        self._tokenized: dict[int, list[TokenizedExample]] = {}

    def setup(self) -> None:
        cfg = self.cfg
        self.clients = load_clients(cfg)  # validates the data before anything is written
        cfg.federation.clients_to_sample(len(self.clients))  # e.g. --partition files: fewer files
        self.test = load_test(cfg)
        ckpt = self.run_dir.prepare(cfg, self.resume)
        write_partition_stats(self.clients, self.run_dir.path)
        self.bench: Workbench = self._bench if self._bench is not None else build_workbench(cfg)
        self.test_tok = self.bench.tokenize(self.test, cfg.data, train_on_prompt=False)
        self.strategy = make_strategy(cfg.federation.strategy, cfg.federation, cfg.train,
                                      len(self.clients), evaluate_fn=self._evaluate)
        self.state = self.bench.initial_state
        self.start_round = 0
        self.history: list[dict[str, Any]] = []
        if ckpt is not None:
            self.state, self.start_round = ckpt.adapter, ckpt.round
            self.strategy.load_state_dict(ckpt.strategy)
            self.history = [r for r in self.run_dir.metrics.read() if r.get("type") == "round"]
        elif self.test_tok:
            record = {"type": "round", "round": 0, "eval": self.strategy.evaluate(0, self.state)}
            self.run_dir.log(record)
            self.history.append(record)
            logger.info(round_summary(record, cfg.federation.rounds))

    def _evaluate(self, round_idx: int, state: AdapterState) -> dict[str, Any]:
        if not self.test_tok:
            return {}
        return self.bench.evaluate(state, self.test_tok, self.cfg.federation.eval_batch_size)

    def client_data(self, client_id: int) -> list[TokenizedExample]:
        """A client's tokenized records, tokenized on first use and kept for later rounds."""
        if client_id not in self._tokenized:
            self._tokenized[client_id] = self.bench.tokenize(self.clients[client_id], self.cfg.data)
        return self._tokenized[client_id]

    def run_round(self, round_idx: int) -> dict[str, Any]:
        start = time.perf_counter()
        clients, client_cfg = self.strategy.configure_train(round_idx)
        updates = []
        with self.progress.task(f"round {round_idx} clients", len(clients)) as bar:
            for cid in clients:
                updates.append(self._train_client(round_idx, cid, client_cfg))
                bar.advance(loss=updates[-1].metrics["train_loss"])
        good, failures = filter_updates(self.state, updates)
        self.state, record = close_round(self.run_dir, self.strategy, self.cfg, round_idx, clients, self.state,
                                         updates, good, failures, start)
        return record

    def _train_client(self, round_idx: int, cid: int, client_cfg: dict[str, Any]):
        data, train = self.client_data(cid), self.cfg.train
        total = num_steps(len(data), train.batch_size, train.local_epochs, train.local_steps)
        with self.progress.task(f"client {cid} steps", total) as bar:
            update = self.bench.trainer.fit(
                self.state, data, train, seed=self.cfg.federation.seed, round_idx=round_idx,
                client_id=cid, proximal_mu=client_cfg["proximal_mu"],
                on_step=lambda step, total, loss: bar.advance(loss=loss))
        self.run_dir.log({"type": "client", "round": round_idx, "client": cid,
                          "num_examples": update.num_examples, **update.metrics})
        return update

    def finish(self) -> RunResult:
        save_adapter(self.bench.model, self.state, self.run_dir.final_dir, self.bench.base.path)
        logger.info("final adapter written to %s", self.run_dir.final_dir)
        return RunResult(self.run_dir.path, self.state, self.history)

    def run(self) -> RunResult:
        self.setup()
        rounds = range(self.start_round + 1, self.cfg.federation.rounds + 1)
        with self.progress.task("rounds", self.cfg.federation.rounds, keep=True) as bar:
            bar.advance(self.start_round)
            for round_idx in rounds:
                self.history.append(self.run_round(round_idx))
                bar.advance()
        return self.finish()


def run_simulation(cfg: Config, out: str | Path, *, resume: bool = False,
                   progress: Progress | None = None) -> RunResult:
    """Run (or resume) a federated job in this process; returns the final global adapter."""
    return Simulation(cfg, out, resume=resume, progress=progress).run()
