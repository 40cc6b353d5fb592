"""The round loop, written once: every runner (the in-process simulation, the Flower ServerApp,
``fedit experiment``) runs its rounds through :class:`Federation`.

    start:      continue from the newest checkpoint, or evaluate the initial adapter (round 0)
    each round: configure (the strategy samples clients and builds their jobs)
                -> dispatch (the runner's Transport delivers jobs and collects replies)
                -> count the bytes moved (as Flower serializes them, fedit.comm.payload)
                -> receive (the strategy may decode a reply) -> check each reply against the job
                   it answers (bad ones are dropped and logged, never averaged)
                -> cap the claimed example counts (fedit.server.trust) -> log a client record
                   per update (its delta's norm; the node's metrics namespaced under "metrics")
                -> aggregate -> check the aggregate -> evaluate -> log -> checkpoint
                (a round whose every update was dropped stops the run: nothing is aggregated;
                a round that sampled nobody, under Poisson sampling, keeps the adapter, or with
                DP-FedAvg releases the noise alone)

A runner supplies only a :class:`Transport`: how jobs reach clients and replies come back
(in-process calls, or Flower messages), as Flower's ``Strategy.start(grid, ...)`` leaves only
message passing to the ``Grid``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate
from fedit.comm.payload import job_payload_bytes, update_payload_bytes
from fedit.config import Config
from fedit.errors import FeditError, UpdateError
from fedit.fileio import atomic_write_text
from fedit.model import AdapterState, check_adapter_state
from fedit.progress import Progress
from fedit.runners.checkpoint import Checkpoint
from fedit.runners.round_log import client_entry, round_summary
from fedit.runners.rundir import RunDir
from fedit.server import Strategy
from fedit.server.checks import check_update, is_finite_state, update_norm
from fedit.server.strategy import member_ids
from fedit.server.trust import dominant_outliers, trusted_counts

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[AdapterState], dict[str, Any]]
COMMUNICATION_FILE = "communication.json"


@dataclass
class ClientFailure:
    """A job that produced no update (no reply, an error reply, a malformed reply)."""

    client_id: int
    reason: str


Reply = ClientUpdate | ClientFailure


class Transport(Protocol):
    """How a runner delivers a round's jobs and collects the replies (one per job, in job order)."""

    def train(self, jobs: Sequence[ClientJob]) -> list[Reply]: ...

    def state_dict(self) -> dict[str, Any]:
        """What the runner keeps between rounds (checkpointed with the round), e.g. client state."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Federation:
    """start() once, then run_round() for each round; ``run()`` does both."""

    def __init__(self, cfg: Config, strategy: Strategy, transport: Transport, run_dir: RunDir, *,
                 evaluate: EvaluateFn | None = None, min_updates: int = 0,
                 progress: Progress | None = None, known_examples: Mapping[int, int] | None = None) -> None:
        self.cfg, self.strategy, self.transport, self.run_dir = cfg, strategy, transport, run_dir
        self.evaluate = evaluate
        self.min_updates = min_updates
        # {client: its size as the server knows it}: claimed example counts are capped by it
        self.known_examples = dict(known_examples or {})
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
        replies = self.transport.train(jobs) if jobs else []
        record: dict[str, Any] = {"type": "round", "round": round_idx, "clients": [j.client_id for j in jobs]}
        record.update(self._traffic(jobs, replies))
        if jobs:
            good, failures = self._accept(round_idx, jobs, replies)
            self._check_enough(round_idx, good, failures)
            state, metrics = self.strategy.aggregate_train(round_idx, self.state, good)
        else:  # Poisson sampling drew nobody: DP-FedAvg still releases its noise, others keep the adapter
            good, failures = [], []
            logger.info("round %d: no client was sampled (--client-sampling poisson)", round_idx)
            state, metrics = (self.strategy.aggregate_train(round_idx, self.state, [])
                              if self.strategy.releases_empty_rounds else (self.state, {}))
            record["no_client_sampled"] = True
        self._check_aggregate(round_idx, state)
        self.state = state
        record.update(metrics)
        record["dropped"] = failures
        record["eval"] = self.evaluate(self.state) if self.evaluate is not None else {}
        record["seconds"] = time.perf_counter() - start
        record["client_compute_seconds"] = sum(u.metrics.get("compute_seconds", 0.0) for u in good)
        self.run_dir.log(record)
        self.run_dir.checkpoint(Checkpoint(round_idx, self.state, self.strategy.state_dict(),
                                           {"transport": self.transport.state_dict()}),
                                self.cfg.federation.keep_checkpoints)
        write_communication(self.run_dir.path, record)
        self.done = round_idx
        self.history.append(record)
        logger.info(round_summary(record, self.rounds))
        return record

    def _check_enough(self, round_idx: int, good: Sequence[ClientUpdate], failures: Sequence[str]) -> None:
        valid = sum(len(member_ids(u)) for u in good)  # a pooled (secure) reply counts its members
        if valid < self.min_updates:
            raise FeditError(f"round {round_idx}: {valid} valid update(s), fewer than --min-nodes "
                             f"{self.min_updates} ({'; '.join(failures)}); the run stops after round "
                             f"{round_idx - 1}, resume it with --resume")
        if not good:  # going on would present an untrained adapter as the result
            raise FeditError(f"round {round_idx}: every update was dropped ({'; '.join(failures) or 'no client'}); "
                             f"nothing of this round was saved, the run stops after round {round_idx - 1}")

    def _accept(self, round_idx: int, jobs: Sequence[ClientJob], replies: Sequence[Reply]
                ) -> tuple[list[ClientUpdate], list[str]]:
        """The round's valid updates, weighted by trusted counts (fedit.server.trust), and one-line
        reasons for the rest; every update gets a client record (server fields, its delta's norm,
        the node's own metrics under ``metrics``)."""
        sent = {job.client_id: job for job in jobs}
        good, failures, diverged, logs = [], [], 0, {}
        for reply in replies:
            reason = reply.reason if isinstance(reply, ClientFailure) else None
            if reason is None:
                try:
                    reply = self.strategy.receive(sent[reply.client_id], reply)
                    check_update(sent[reply.client_id].state, reply)
                except UpdateError as exc:
                    reason = str(exc)
                    diverged += not is_finite_state(reply.state)
            if reason is None:
                good.append(reply)
                continue
            logger.warning("dropping update: %s", reason)
            failures.append(reason)
            if isinstance(reply, ClientUpdate):
                logs[reply.client_id] = {"type": "client", "round": round_idx, "client": reply.client_id,
                                         "dropped": reason}
        if not good and jobs and diverged == len(jobs):
            raise FeditError(f"round {round_idx}: every update holds NaN or infinite values ({failures[0]}); "
                             f"nothing of this round was saved, the run stops after round {round_idx - 1} "
                             "(try a lower --lr)")
        good = self._weigh(round_idx, sent, good, logs)
        for job in jobs:  # in job order
            if job.client_id in logs:
                self.run_dir.log(logs[job.client_id])
        return good, failures

    def _weigh(self, round_idx: int, sent: Mapping[int, ClientJob], good: list[ClientUpdate],
               logs: dict[int, dict[str, Any]]) -> list[ClientUpdate]:
        """Valid updates with trusted example counts, and their client records in ``logs``. A pooled
        reply (secure aggregation) was weighted by the server already: one record per member, no norm
        (the server never saw the members' updates)."""
        rob = self.cfg.robustness
        single = [u for u in good if not isinstance(u, PooledUpdate)]
        counts = trusted_counts({u.client_id: u.num_examples for u in single}, self.known_examples,
                                rob.max_client_examples, rob.max_client_share)
        weighed, norms = [], {}
        for u in good:
            if isinstance(u, PooledUpdate):  # weighted inside the secure sum by capped counts (round_counts)
                for cid in u.client_ids:
                    logs[cid] = client_entry(round_idx, cid, u.member_examples.get(cid), u.member_claims.get(cid),
                                             u.member_metrics.get(cid, {}))
                weighed.append(u)
                continue
            norms[u.client_id] = update_norm(sent[u.client_id].state, u.state)
            logs[u.client_id] = client_entry(round_idx, u.client_id, counts[u.client_id], u.num_examples, u.metrics,
                                             norms[u.client_id])
            weighed.append(dataclasses.replace(u, num_examples=counts[u.client_id]))
        for line in dominant_outliers({u.client_id: u.num_examples for u in single}, counts, norms):
            logger.warning("round %d: %s", round_idx, line)
        return weighed

    def _traffic(self, jobs: Sequence[ClientJob], replies: Sequence[Reply]) -> dict[str, int]:
        """Bytes of this round's train messages and update replies, as Flower serializes them
        (fedit.comm.payload), with the run's totals so far. Under secure aggregation the protocol's
        own count (its messages, masked int64 vectors) replaces both."""
        pooled = [r for r in replies if isinstance(r, PooledUpdate) and "secagg_bytes_up" in r.round_metrics]
        if pooled:
            down = sum(int(p.round_metrics.get("secagg_bytes_down", 0)) for p in pooled)
            up = sum(int(p.round_metrics["secagg_bytes_up"]) for p in pooled)
        else:
            cache: dict = {}
            down = sum(job_payload_bytes(job, cache) for job in jobs)
            up = sum(_reply_bytes(r, cache) for r in replies if isinstance(r, ClientUpdate))
        last = next((r for r in reversed(self.history) if "bytes_down_total" in r), {})
        return {"bytes_down": down, "bytes_up": up, "bytes_down_total": last.get("bytes_down_total", 0) + down,
                "bytes_up_total": last.get("bytes_up_total", 0) + up}

    def _check_aggregate(self, round_idx: int, state: AdapterState) -> None:
        """Never save or send an aggregate that is not finite (a diverged or poisoned round)."""
        try:
            check_adapter_state(self.state, state)
        except UpdateError as exc:
            raise FeditError(f"round {round_idx}: the aggregated adapter is unusable ({exc}); nothing of this "
                             f"round was saved, the run stops after round {round_idx - 1} (try a lower "
                             "--lr, or a robust aggregator)") from None


def _reply_bytes(update: ClientUpdate, cache: dict) -> int:
    try:
        return update_payload_bytes(update, cache)
    except TypeError:  # a metric no Flower record can carry (an in-process client's): never sent
        return 0


def write_communication(run_dir: Path, record: dict[str, Any]) -> None:
    """``communication.json``: the run's bytes so far (FlowerTune reports the total, in MB)."""
    down, up = record["bytes_down_total"], record["bytes_up_total"]
    summary = {"rounds": record["round"], "bytes_down": down, "bytes_up": up, "bytes_total": down + up,
               "megabytes_total": (down + up) / 1e6,
               "counted": "train messages and update replies as Flower serializes their records "
                          "(fedit.comm.payload); message envelopes and gRPC/TLS framing excluded"}
    atomic_write_text(run_dir / COMMUNICATION_FILE, json.dumps(summary, indent=2) + "\n")
