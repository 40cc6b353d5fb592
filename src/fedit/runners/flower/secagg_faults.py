"""Secure aggregation that survives the dropouts it promises, and says where each node was lost.

Flower 1.42's ``SecAggPlusWorkflow`` tolerates a node lost while it trains (stage 2, "collect
masked vectors") or while it unmasks, but not one lost earlier. A node lost during set-up (stage 0)
or key sharing (stage 1) never handed its key shares to anyone and never entered a pairwise mask,
yet the workflow keeps it among the sampled nodes: at unmasking it lists it as *dead* to every
survivor, each survivor's ``secaggplus_mod`` looks up the share it never received
(``KeyError`` in ``_unmask``, every survivor fails), and the server counts no shares for it
("Not enough shares to recover secret"). The round halts although enough nodes are alive.
docs/flower.md ("Secure aggregation under faults") has the minimal reproduction.

:class:`TolerantSecAggPlus` is Flower's workflow with one change: after set-up and after key
sharing, the nodes that did not answer leave the protocol (the sampled set and every neighbour set
shrink to the nodes still in it), which is what the protocol's own description does with them. No
cryptography is changed. :class:`StageGrid` records at which stage each node was lost.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from flwr.server.workflow import SecAggPlusWorkflow

from fedit.privacy.secagg_cost import message_bytes
from fedit.runners.flower.exchange import exchange

logger = logging.getLogger(__name__)

STAGE_NAMES = ("set-up", "key sharing", "training", "unmasking")   # SecAgg+'s four round trips
EARLY_STAGES = STAGE_NAMES[:2]   # before any node trained or masked anything: safe to start over


def rebase(state: Any) -> None:
    """Leave out the nodes that did not answer this stage: they hold no share and no mask."""
    kept = set(state.active_node_ids)
    state.sampled_node_ids = kept
    state.nid_to_neighbours = {nid: set(nbrs) & kept for nid, nbrs in state.nid_to_neighbours.items()
                               if nid in kept}


class TolerantSecAggPlus(SecAggPlusWorkflow):
    """``SecAggPlusWorkflow`` that drops the nodes lost during set-up or key sharing (see above)."""

    def setup_stage(self, grid, context, state) -> bool:
        super().setup_stage(grid, context, state)
        if not state.sampled_node_ids:       # nothing was sampled: Flower already said why
            return False
        rebase(state)
        return self._check_threshold(state)

    def share_keys_stage(self, grid, context, state) -> bool:
        super().share_keys_stage(grid, context, state)
        rebase(state)
        return self._check_threshold(state)


class StageGrid:
    """The Grid as the workflow sees it: its messages go through fedit's exchange (replies matched to
    messages, so a dead node's error reply is charged to that node; never waiting forever, never
    silently), counting bytes and messages, and noting the stage at which each node was lost."""

    def __init__(self, grid: Any, name: Callable[[int], str], round_idx: int) -> None:
        self.grid, self.name, self.round = grid, name, round_idx
        self.down = self.up = self.messages = self.calls = 0
        self.lost: dict[int, tuple[str, str]] = {}   # node -> (stage, why)

    @property
    def stage(self) -> str:
        """The stage the protocol reached (the last one it ran)."""
        return STAGE_NAMES[min(max(self.calls - 1, 0), len(STAGE_NAMES) - 1)]

    def send_and_receive(self, messages, *, timeout: float | None = None):
        stage = STAGE_NAMES[min(self.calls, len(STAGE_NAMES) - 1)]
        self.calls += 1
        messages = list(messages)
        self.down += sum(message_bytes(m.content) for m in messages)
        nodes = [m.metadata.dst_node_id for m in messages]
        replies = exchange(self.grid, messages, nodes, timeout, name=self.name,
                           what=f"round {self.round} secure aggregation ({stage}) replies")
        self.messages += len(messages) + len(replies)
        for node, reply in replies.items():
            if reply.has_error():
                self.lost.setdefault(node, (stage, reply.error.reason))
            else:
                self.up += message_bytes(reply.content)
        for node in set(nodes) - set(replies):
            self.lost.setdefault(node, (stage, "no reply"))
        for node in nodes:
            if node in self.lost and self.lost[node][0] == stage:
                logger.warning("round %d: %s lost during %s (%s)", self.round, self.name(node), stage,
                               self.lost[node][1])
        return list(replies.values())

    def lost_early(self) -> list[int]:
        """Nodes lost before anyone trained: a halted round may start over without them."""
        return [node for node, (stage, _) in self.lost.items() if stage in EARLY_STAGES]
