"""The fedit ServerApp: the core's strategy driving real SuperNodes through Flower's Grid.

setup (run directory, test data, model, roll call of the nodes, strategy, resume) -> one
``run_round`` per round -> ``finish`` (the PEFT adapter in ``final/``). It writes the same run
directory as ``fedit run`` (config.yaml, metrics.jsonl, checkpoints/, final/), plus
``nodes.json`` (which node is which client). Replies are checked with the core's
``filter_updates``; a failed node costs only its update, and a round with fewer than
``min-nodes`` valid updates stops the run before anything is written for it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedit.config import Config
from fedit.errors import FeditError, UpdateError
from fedit.model import AdapterState, save_adapter
from fedit.fileio import atomic_write_text
from fedit.runners.common import Workbench, build_workbench, close_round, load_test, round_summary
from fedit.runners.flower import wire
from fedit.runners.rundir import RunDir
from fedit.server import filter_updates, make_strategy

logger = logging.getLogger(__name__)

app = ServerApp()


@dataclass
class ServerSettings:
    cfg: Config
    out: Path
    resume: bool
    min_nodes: int
    wait_nodes: int
    node_timeout: float
    round_timeout: float

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> ServerSettings:
        out = str(rc.get(wire.OUT_KEY) or "")
        if not out:
            raise FeditError(f"run config '{wire.OUT_KEY}' is empty: where should the run directory go?")
        min_nodes = int(rc.get(wire.MIN_NODES_KEY, 1))
        if min_nodes < 1:
            raise FeditError(f"--min-nodes: must be at least 1, got {min_nodes}")
        return cls(wire.config_from_run(rc), Path(out), bool(rc.get(wire.RESUME_KEY, False)), min_nodes,
                   max(min_nodes, int(rc.get(wire.WAIT_NODES_KEY, min_nodes))),
                   float(rc.get(wire.NODE_TIMEOUT_KEY, 300.0)), float(rc.get(wire.ROUND_TIMEOUT_KEY, 0.0)))


class FlowerServer:
    """setup() -> run_round() per round -> finish(), over the nodes of a Flower Grid."""

    def __init__(self, grid: Grid, settings: ServerSettings) -> None:
        self.grid, self.s, self.cfg = grid, settings, settings.cfg
        self.run_dir = RunDir(settings.out)

    def setup(self) -> None:
        cfg = self.cfg
        ckpt = self.run_dir.prepare(cfg, self.s.resume)
        self.nodes = self._roll_call()
        self.bench: Workbench = build_workbench(cfg)
        self.test_tok = self.bench.tokenize(load_test(cfg), cfg.data, train_on_prompt=False)
        self.strategy = make_strategy(cfg.federation.strategy, cfg.federation, cfg.train,
                                      len(self.nodes), evaluate_fn=self._evaluate)
        self.state: AdapterState = self.bench.initial_state
        self.start_round = 0
        if ckpt is not None:
            self.state, self.start_round = ckpt.adapter, ckpt.round
            self.strategy.load_state_dict(ckpt.strategy)
        elif self.test_tok:
            record = {"type": "round", "round": 0, "eval": self.strategy.evaluate(0, self.state)}
            self.run_dir.log(record)
            logger.info(round_summary(record, cfg.federation.rounds))

    def _evaluate(self, round_idx: int, state: AdapterState) -> dict[str, Any]:
        if not self.test_tok:
            return {}
        return self.bench.evaluate(state, self.test_tok, self.cfg.federation.eval_batch_size)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.s.node_timeout
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < self.s.wait_nodes and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = sorted(self.grid.get_node_ids())
        if len(node_ids) < self.s.min_nodes:
            raise FeditError(f"only {len(node_ids)} node(s) connected after {self.s.node_timeout:.0f} s; "
                             f"--min-nodes is {self.s.min_nodes}")
        logger.info("%d node(s) connected", len(node_ids))
        return node_ids

    def _roll_call(self) -> dict[int, int]:
        """Ask every node for its client index and record count: {client index: node id}."""
        node_ids = self._wait_for_nodes()
        msgs = [Message(RecordDict({wire.CONFIG: ConfigRecord({"hello": 1})}), dst_node_id=n,
                        message_type=MessageType.QUERY, group_id="roll-call") for n in node_ids]
        replies = exchange(self.grid, msgs, node_ids, self.s.node_timeout)
        pinned: dict[int, int] = {}
        free, info = [], {}
        for node in node_ids:
            reply = replies.get(node)
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                logger.warning("node %d did not answer the roll call (%s); it takes no part", node, why)
                continue
            answer = dict(reply.content[wire.CONFIG])
            info[node] = answer
            if answer.get("error"):
                logger.warning("node %d: %s", node, answer["error"])
            index = int(answer.get("client-index", -1))
            if index >= 0 and index in pinned.values():
                other = next(n for n, i in pinned.items() if i == index)
                raise FeditError(f"nodes {other} and {node} both set client-index={index}")
            if index >= 0:
                pinned[node] = index
            else:
                free.append(node)
        return self._assign(pinned, free, info)

    def _assign(self, pinned: dict[int, int], free: list[int], info: dict[int, dict]) -> dict[int, int]:
        total = len(pinned) + len(free)
        bad = sorted(i for i in pinned.values() if i >= total)
        if bad:
            raise FeditError(f"client-index {bad[0]} is out of range: {total} node(s) take part, so "
                             f"indices must be 0..{total - 1}")
        open_ids = iter(sorted(set(range(total)) - set(pinned.values())))
        clients = {index: node for node, index in pinned.items()}
        clients.update({next(open_ids): node for node in free})
        if len(clients) < self.s.min_nodes:
            raise FeditError(f"only {len(clients)} node(s) answered; --min-nodes is {self.s.min_nodes}")
        table = [{"client": c, "node_id": n, "num_examples": info[n].get("num-examples"),
                  "error": info[n].get("error") or None} for c, n in sorted(clients.items())]
        atomic_write_text(self.run_dir.path / "nodes.json", json.dumps(table, indent=2) + "\n")
        logger.info("clients: %s", ", ".join(f"{r['client']}=node {r['node_id']} ({r['num_examples']} records)"
                                             for r in table))
        return clients

    def run_round(self, round_idx: int) -> dict[str, Any]:
        start = time.perf_counter()
        clients, client_cfg = self.strategy.configure_train(round_idx)
        msgs = [Message(wire.train_content(self.state, round_idx, cid, client_cfg["proximal_mu"]),
                        dst_node_id=self.nodes[cid], message_type=MessageType.TRAIN, group_id=str(round_idx))
                for cid in clients]
        replies = exchange(self.grid, msgs, clients, self.s.round_timeout or None)
        updates, failures = self._collect(round_idx, clients, replies)
        good, bad = filter_updates(self.state, updates)
        failures += bad
        if len(good) < self.s.min_nodes:
            raise FeditError(f"round {round_idx}: {len(good)} valid update(s), fewer than --min-nodes "
                             f"{self.s.min_nodes} ({'; '.join(failures)}); the run stops after round "
                             f"{round_idx - 1}, resume it with --resume")
        self.state, record = close_round(self.run_dir, self.strategy, self.cfg, round_idx, clients, self.state,
                                         updates, good, failures, start)
        return record

    def _collect(self, round_idx: int, clients: list[int], replies: dict[int, Message]):
        updates, failures = [], []
        for cid in clients:  # in client order, as the simulation aggregates
            if cid not in replies:
                failures.append(f"client {cid} (node {self.nodes[cid]}): no reply")
                logger.warning("dropping update: %s", failures[-1])
                continue
            try:
                update = wire.update_from_reply(replies[cid], cid)
            except UpdateError as exc:
                logger.warning("dropping update: %s", exc)
                failures.append(str(exc))
                continue
            self.run_dir.log({"type": "client", "round": round_idx, "client": cid,
                              "num_examples": update.num_examples, **update.metrics})
            updates.append(update)
        return updates, failures

    def finish(self) -> None:
        save_adapter(self.bench.model, self.state, self.run_dir.final_dir, self.bench.base.path)
        logger.info("final adapter written to %s", self.run_dir.final_dir)

    def run(self) -> None:
        self.setup()
        for round_idx in range(self.start_round + 1, self.cfg.federation.rounds + 1):
            self.run_round(round_idx)
        self.finish()


def exchange(grid: Grid, msgs: list[Message], keys: list[Any], timeout: float | None) -> dict[Any, Message]:
    """Send ``msgs`` and collect replies until all arrived or ``timeout``: {key of the message: reply}.

    Replies are matched by ``reply_to_message_id``, not by sender: when a node dies, the SuperLink
    answers for it with an error reply whose sender is not that node.
    """
    pending = {mid: key for mid, key in zip(grid.push_messages(msgs), keys) if mid is not None}
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: dict[Any, Message] = {}
    while pending and (deadline is None or time.monotonic() < deadline):
        for reply in grid.pull_messages(list(pending)):
            key = pending.pop(reply.metadata.reply_to_message_id, None)
            if key is not None:
                replies[key] = reply
        if pending:
            time.sleep(0.5)
    return replies


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s fedit: %(message)s"))
    root = logging.getLogger("fedit")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


@app.main()
def main(grid: Grid, context: Context) -> None:
    _setup_logging()
    try:
        FlowerServer(grid, ServerSettings.from_run_config(context.run_config)).run()
    except FeditError as exc:
        logger.error("run failed: %s", exc)
        raise
