"""The round loop, written once: every runner (the in-process simulation, the Flower ServerApp,
``fedit experiment``) runs its rounds through :class:`Federation`.

    start:      continue from the newest checkpoint, or evaluate the initial adapter (round 0)
    each round: configure (the strategy samples clients and builds their jobs)
                -> dispatch (the runner's Transport delivers jobs and collects replies)
                -> receive (the strategy may decode a reply) -> check each reply against the job
                   it answers (bad ones are dropped and logged, never averaged)
                -> aggregate -> check the aggregate -> evaluate -> log -> checkpoint
                (a round whose every update was dropped stops the run: nothing is aggregated)

A runner supplies only a :class:`Transport`: how jobs reach clients and replies come back
(in-process calls, or Flower messages), as Flower's ``Strategy.start(grid, ...)`` leaves only
message passing to the ``Grid``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate
from fedit.config import Config
from fedit.errors import FeditError, UpdateError
from fedit.model import AdapterState, check_adapter_state
from fedit.progress import Progress
from fedit.runners.checkpoint import Checkpoint
from fedit.runners.rundir import RunDir
from fedit.server import Strategy, filter_updates
from fedit.server.strategy import member_ids

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[AdapterState], dict[str, Any]]
# Fields of a client record that the server writes; a client's metrics never overwrite them.
CLIENT_RECORD_FIELDS = ("type", "round", "client", "num_examples")


@dataclass
class ClientFailure:
    """A job that produced no update (no reply, an error reply, a malformed reply)."""

    client_id: int
    reason: str


Reply = ClientUpdate | ClientFailure


class Transport(Protocol):
    """How a runner delivers a round's jobs and collects the replies: one per job, in job order; or,
    under secure aggregation, one PooledUpdate for the clients whose sum it holds, then a failure
    per client that dropped out."""

    def train(self, jobs: Sequence[ClientJob]) -> list[Reply]: ...

    def state_dict(self) -> dict[str, Any]:
        """What the runner keeps between rounds (checkpointed with the round), e.g. client state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Federation:
    """start() once, then run_round() for each round; ``run()`` does both."""

    def __init__(self, cfg: Config, strategy: Strategy, transport: Transport, run_dir: RunDir, *,
                 evaluate: EvaluateFn | None = None, min_updates: int = 0,
                 progress: Progress | None = None) -> None:
        self.cfg, self.strategy, self.transport, self.run_dir = cfg, strategy, transport, run_dir
        self.evaluate = evaluate
        self.min_updates = min_updates
        self.progress = progress or Progress()
        self.history: list[dict[str, Any]] = []

    @property
    def rounds(self) -> int:
        return self.cfg.federation.rounds

    def start(self, initial_state: AdapterState, ckpt: Checkpoint | None) -> None:
        """Continue after ``ckpt`` (from ``RunDir.prepare``), or start from ``initial_state``."""
        if ckpt is not None:
            self.state, self.done = ckpt.adapter, ckpt.round
            self.strategy.load_state_dict(ckpt.strategy)   # may refuse the resumed settings
            self.transport.load_state_dict(ckpt.extra.get("transport", {}))
            self.run_dir.save_config(self.cfg)
            self.history = [r for r in self.run_dir.metrics.read() if r.get("type") == "round"]
            return
        self.state, self.done = initial_state, 0
        if self.evaluate is not None:
            record = {"type": "round", "round": 0, "eval": self.evaluate(self.state)}
            self.run_dir.log(record)
            self.history.append(record)
            logger.info(round_summary(record, self.rounds))

    def run(self) -> AdapterState:
        with self.progress.task("rounds", self.rounds, keep=True) as bar:
            bar.advance(self.done)
            for round_idx in range(self.done + 1, self.rounds + 1):
                self.run_round(round_idx)
                bar.advance()
        return self.state

    def run_round(self, round_idx: int) -> dict[str, Any]:
        start = time.perf_counter()
        jobs = self.strategy.configure_train(round_idx, self.state)
        replies = self.transport.train(jobs)
        sent = {job.client_id: job for job in jobs}
        updates, failures = self._sort_replies(round_idx, replies)
        updates = self._receive(sent, updates, failures)
        good, bad = filter_updates({cid: job.state for cid, job in sent.items()}, updates)
        failures += bad
        valid = sum(len(member_ids(u)) for u in good)  # a pooled (secure) reply counts its members
        if valid < self.min_updates:
            raise FeditError(f"round {round_idx}: {valid} valid update(s), fewer than --min-nodes "
                             f"{self.min_updates} ({'; '.join(failures)}); the run stops after round "
                             f"{round_idx - 1}, resume it with --resume")
        if not good:  # going on would present an untrained adapter as the result
            raise FeditError(f"round {round_idx}: every update was dropped ({'; '.join(failures) or 'no client'}); "
                             f"nothing of this round was saved, the run stops after round {round_idx - 1}")
        record: dict[str, Any] = {"type": "round", "round": round_idx, "clients": [j.client_id for j in jobs]}
        state, metrics = self.strategy.aggregate_train(round_idx, self.state, good)
        self._check_aggregate(round_idx, state)
        self.state = state
        record.update(metrics)
        record["dropped"] = failures
        record["eval"] = self.evaluate(self.state) if self.evaluate is not None else {}
        record["seconds"] = time.perf_counter() - start
        record["client_compute_seconds"] = sum(u.metrics.get("compute_seconds", 0.0) for u in updates)
        self.run_dir.log(record)
        self.run_dir.checkpoint(Checkpoint(round_idx, self.state, self.strategy.state_dict(),
                                           {"transport": self.transport.state_dict()}),
                                self.cfg.federation.keep_checkpoints)
        self.done = round_idx
        self.history.append(record)
        logger.info(round_summary(record, self.rounds))
        return record

    def _sort_replies(self, round_idx: int, replies: Sequence[Reply]) -> tuple[list[ClientUpdate], list[str]]:
        """Updates (each logged as a client record) and one-line reasons for the failed jobs."""
        updates, failures = [], []
        for reply in replies:
            if isinstance(reply, ClientFailure):
                logger.warning("dropping update: %s", reply.reason)
                failures.append(reply.reason)
                continue
            for client_id, num_examples, client_metrics in _members(reply):
                metrics = {k: v for k, v in client_metrics.items() if k not in CLIENT_RECORD_FIELDS}
                self.run_dir.log({"type": "client", "round": round_idx, "client": client_id,
                                  "num_examples": num_examples, **metrics})
            updates.append(reply)
        return updates, failures

    def _receive(self, sent: dict[int, ClientJob], updates: Sequence[ClientUpdate],
                 failures: list[str]) -> list[ClientUpdate]:
        """Each update as the strategy reads it; one it refuses (UpdateError) is dropped and logged."""
        received = []
        for update in updates:
            try:
                received.append(self.strategy.receive(sent[update.client_id], update))
            except UpdateError as exc:
                logger.warning("dropping update: %s", exc)
                failures.append(str(exc))
        return received

    def _check_aggregate(self, round_idx: int, state: AdapterState) -> None:
        """Never save or send an aggregate that is not finite (a diverged or poisoned round)."""
        try:
            check_adapter_state(self.state, state)
        except UpdateError as exc:
            raise FeditError(f"round {round_idx}: the aggregated adapter is unusable ({exc}); nothing of this "
                             f"round was saved, the run stops after round {round_idx - 1} (try a lower "
                             "--lr, or a robust aggregator)") from None


def _members(reply: ClientUpdate) -> list[tuple[int, int | None, dict[str, Any]]]:
    """(client, examples, metrics) of each client a reply stands for (a pooled reply: its members,
    whose adapters the server never saw)."""
    if isinstance(reply, PooledUpdate):
        return [(c, reply.member_examples.get(c), reply.member_metrics.get(c, {})) for c in reply.client_ids]
    return [(reply.client_id, reply.num_examples, reply.metrics)]


def _num(value: Any, spec: str) -> str:
    """A logged number (None where metrics.jsonl holds a non-finite value)."""
    return format(value, spec) if isinstance(value, (int, float)) else "n/a"


def round_summary(record: dict[str, Any], rounds: int) -> str:
    """The one log line a round ends with."""
    parts = [f"round {record['round']}/{rounds}"]
    if record.get("clients") is not None:
        parts.append(f"clients {record['clients']}")
    if "train_loss" in record:
        parts.append(f"train loss {_num(record['train_loss'], '.4f')}")
    ev = (record.get("eval") or {}).get("overall")
    if ev:
        parts.append(f"eval loss {_num(ev.get('loss'), '.4f')} ppl {_num(ev.get('perplexity'), '.2f')}")
    if "lora_gap_mean" in record:
        parts.append(f"lora gap {_num(record['lora_gap_mean'], '.3g')}")
    if "svd_energy_dropped_mean" in record:
        parts.append(f"svd drop {_num(record['svd_energy_dropped_mean'], '.3g')}")
    if "dp_epsilon" in record:
        parts.append(f"DP epsilon {_num(record['dp_epsilon'], '.3g')} (delta {record['dp_delta']:.0e})")
    if record.get("dropped"):
        parts.append(f"dropped {len(record['dropped'])}")
    if "seconds" in record:
        parts.append(f"{record['seconds']:.1f} s")
    return " | ".join(parts)
