"""The fedit ServerApp: the core's round loop driving real SuperNodes through Flower's Grid.

The run set-up of :class:`fedit.runners.session.Session` (run directory, model, test data, the roll
call of the nodes, strategy, resume) -> the rounds of :class:`fedit.runners.federation.Federation`
-> ``final/``. This module supplies only the roll call and the loop's transport,
:class:`FlowerClients`: jobs go out as Flower train messages, replies come back as updates or failures. It writes the same run directory as
``fedit run`` (config.yaml, metrics.jsonl, checkpoints/, final/), plus ``nodes.json`` (which node
is which client). A failed node costs only its update; a round with fewer than ``min-nodes``
valid updates stops the run before anything is written for it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedit.client.job import ClientJob
from fedit.client_lora import ClientLora, canonical_targets
from fedit.config import Config, DeployConfig
from fedit.errors import FeditError, UpdateError
from fedit.fileio import atomic_write_text
from fedit.runners.federation import ClientFailure, Reply, Transport
from fedit.runners.flower import wire
from fedit.runners.flower.exchange import exchange, unlisted_failures
from fedit.runners.flower.roll_call import assign_indices
from fedit.runners.session import Roster, Session
from fedit.server import check_methods
from fedit.server.build import client_layouts

# What a refusal of the clients' adapters names in a deployment: the run's flags or the nodes' own config.
NODE_FLAGS = (f"--client-ranks / node config {wire.LORA_RANK_KEY}",
              f"--client-targets / node config {wire.LORA_TARGETS_KEY}")

logger = logging.getLogger(__name__)

app = ServerApp()


@dataclass
class ServerSettings:
    cfg: Config
    out: Path
    resume: bool
    deploy: DeployConfig

    @classmethod
    def from_run_config(cls, rc: dict[str, Any]) -> ServerSettings:
        out = str(rc.get(wire.OUT_KEY) or "")
        if not out:
            raise FeditError(f"run config '{wire.OUT_KEY}' is empty: where should the run directory go?")
        return cls(wire.config_from_run(rc), Path(out), bool(rc.get(wire.RESUME_KEY, False)),
                   wire.deploy_from_run(rc))


class FlowerClients:
    """The round loop's transport over Flower: one train message per job, replies matched to jobs;
    a node the SuperLink no longer lists is not sent the round (fedit.runners.flower.exchange)."""

    def __init__(self, grid: Grid, nodes: dict[int, int], round_timeout: float) -> None:
        self.grid, self.nodes, self.round_timeout = grid, nodes, round_timeout
        self.gone: dict[int, str] = {}   # node -> the round it last failed to answer

    def train(self, jobs: Sequence[ClientJob]) -> list[Reply]:
        listed, missing = unlisted_failures(self.grid, self.nodes, jobs, self.gone)
        msgs = [Message(wire.train_content(job), dst_node_id=self.nodes[job.client_id],
                        message_type=MessageType.TRAIN, group_id=str(job.round)) for job in listed]
        keys = [job.client_id for job in listed]
        replies = exchange(self.grid, msgs, keys, self.round_timeout or None, what=f"round {jobs[0].round} updates",
                           name=lambda cid: f"client {cid} (node {self.nodes[cid]})") if jobs else {}
        out: dict[int, Reply] = {f.client_id: f for f in missing}
        for cid in keys:
            if cid not in replies:
                self.gone[self.nodes[cid]] = f"no reply in round {jobs[0].round}"
                out[cid] = ClientFailure(cid, f"client {cid} (node {self.nodes[cid]}): no reply")
                continue
            try:
                out[cid] = wire.update_from_reply(replies[cid], cid)
            except UpdateError as exc:
                out[cid] = ClientFailure(cid, str(exc))
        return [out[job.client_id] for job in jobs]   # in job order, as the simulation aggregates

    def state_dict(self) -> dict[str, Any]:
        return {}  # client state lives on the nodes

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FlowerServer(Session):
    """The run set-up of :class:`fedit.runners.session.Session` over the nodes of a Flower Grid:
    the clients are the nodes that answer the roll call, once the run directory exists."""

    fingerprint_fields = ("test_data",)  # the training data lives on the nodes

    def __init__(self, grid: Grid, settings: ServerSettings) -> None:
        super().__init__(settings.cfg, settings.out, resume=settings.resume)
        self.grid, self.s = grid, settings
        self.min_updates = settings.deploy.min_nodes

    def check(self, cfg: Config) -> None:
        wire.check_deployable(cfg)

    def late_clients(self, cfg: Config) -> Roster:
        self.nodes, sizes = self._roll_call()
        check_methods(cfg, self.layouts, NODE_FLAGS)
        return Roster(len(self.nodes), "the nodes that answered the roll call", self.layouts, sizes)

    def make_transport(self, cfg: Config, roster: Roster) -> Transport:
        if cfg.privacy.secure_aggregation:  # Flower's SecAgg+: the loop gets only the sum of the updates
            from fedit.runners.flower.secagg import SecureFlowerClients

            return SecureFlowerClients(self.grid, self.nodes, roster.known_examples, cfg, self.s.deploy.round_timeout)
        return FlowerClients(self.grid, self.nodes, self.s.deploy.round_timeout)

    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.s.deploy.node_timeout
        node_ids = sorted(self.grid.get_node_ids())
        while len(node_ids) < self.s.deploy.nodes_to_wait_for and time.monotonic() < deadline:
            time.sleep(0.5)
            node_ids = sorted(self.grid.get_node_ids())
        if len(node_ids) < self.s.deploy.min_nodes:
            raise FeditError(f"only {len(node_ids)} node(s) connected after {self.s.deploy.node_timeout:.0f} s; "
                             f"--min-nodes is {self.s.deploy.min_nodes}")
        logger.info("%d node(s) connected", len(node_ids))
        return node_ids

    def _roll_call(self) -> tuple[dict[int, int], dict[int, int]]:
        """Ask every node for its client index and record count: ({client index: node id},
        {client index: the record count its node reported}, which caps the counts it claims later)."""
        node_ids = self._wait_for_nodes()
        msgs = [Message(RecordDict({wire.CONFIG: ConfigRecord({"hello": 1})}), dst_node_id=n,
                        message_type=MessageType.QUERY, group_id="roll-call") for n in node_ids]
        replies = exchange(self.grid, msgs, node_ids, self.s.deploy.node_timeout, what="roll-call answers",
                           name=lambda n: f"node {n}")
        pinned: dict[int, int] = {}
        free, info = [], {}
        for node in node_ids:
            reply = replies.get(node)
            if reply is None or reply.has_error():
                why = "no reply" if reply is None else reply.error.reason
                logger.warning("node %d did not answer the roll call (%s); it takes no part", node, why)
                continue
            try:
                answer = dict(reply.content[wire.CONFIG])
            except (KeyError, TypeError):
                logger.warning("node %d answered the roll call with no %s record; it takes no part", node, wire.CONFIG)
                continue
            info[node] = answer
            if answer.get("error"):
                logger.warning("node %d: %s", node, answer["error"])
            index = _index(answer.get("client-index", -1))
            if index >= 0:
                pinned[node] = index
            else:
                free.append(node)
        clients = self._assign(pinned, free, info)
        sizes = {c: _count(info[n].get("num-examples")) for c, n in clients.items()}
        return clients, {c: n for c, n in sizes.items() if n > 0}

    def _assign(self, pinned: dict[int, int], free: list[int], info: dict[int, dict]) -> dict[int, int]:
        clients, notes = assign_indices(pinned, free)
        for note in notes:
            logger.warning("roll call: %s", note)
        if len(clients) < self.s.deploy.min_nodes:
            raise FeditError(f"only {len(clients)} node(s) answered; --min-nodes is {self.s.deploy.min_nodes}")
        self.layouts = self._layouts(clients, info)
        table = [{"client": c, "node_id": n, "num_examples": info[n].get("num-examples"),
                  "lora_rank": self.layouts[c].rank, "lora_targets": self.layouts[c].targets,
                  "lora_from": "node" if info[n].get(wire.LORA_RANK_KEY) or info[n].get(wire.LORA_TARGETS_KEY)
                  else "run", "error": info[n].get("error") or None} for c, n in sorted(clients.items())]
        atomic_write_text(self.run_dir.path / "nodes.json", json.dumps(table, indent=2) + "\n")
        logger.info("clients: %s", ", ".join(f"{r['client']}=node {r['node_id']} ({r['num_examples']} records)"
                                             for r in table))
        return clients

    def _layouts(self, clients: dict[int, int], info: dict[int, dict]) -> list[ClientLora]:
        """Every client's adapter: what its node's config says (lora-rank, lora-targets), else what
        --client-ranks / --client-targets give its client index, else the global adapter."""
        defaults = client_layouts(self.cfg, len(clients))
        layouts = []
        for index in range(len(clients)):
            answer = info[clients[index]]
            rank = int(answer.get(wire.LORA_RANK_KEY) or 0) or defaults[index].rank
            targets = str(answer.get(wire.LORA_TARGETS_KEY) or "") or defaults[index].targets
            layouts.append(ClientLora(rank, canonical_targets(targets)))
        return layouts


def _index(value: Any) -> int:
    """A roll-call client index as an int (-1, i.e. any, when it is not a non-negative int)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else -1


def _count(value: Any) -> int:
    """A roll-call record count as an int (0 when it is not one)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


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
