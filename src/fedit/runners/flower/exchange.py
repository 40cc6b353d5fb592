"""Sending messages to nodes and waiting for their replies, never silently and never forever.

A node can be live (its SuperNode keeps sending heartbeats, so the SuperLink lists it) and still
never answer: a hung ClientApp, or a node that chooses to stall the federation. So every wait
has a deadline and says whom it waits for:

* ``--round-timeout T > 0``: the replies of a round (or of one stage of a secure round) get T s.
* ``--round-timeout 0`` (the default): the deadline follows the round itself. Once the first
  reply arrives after ``t`` s, the others get ``max(AUTO_FLOOR, AUTO_FACTOR * t)`` s more: a node
  3x slower than the fastest still makes it, one that hangs is dropped. Before any reply there is
  no deadline (nobody has shown how long this round takes), only the log line below.
* Every ``WAIT_LOG_EVERY`` s a line names the nodes still awaited and how long they have had.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

from fedit.runners.federation import ClientFailure

logger = logging.getLogger(__name__)

AUTO_FLOOR = 300.0        # seconds the slower nodes always get after the first reply
AUTO_FACTOR = 3.0         # ... or this many times the first reply's time, if longer
WAIT_LOG_EVERY = 60.0     # seconds between two "waiting for" lines
POLL = 0.5


def auto_deadline(start: float, first_reply: float) -> float:
    """When a round with no fixed timeout stops waiting, given when its first reply came."""
    return first_reply + max(AUTO_FLOOR, AUTO_FACTOR * (first_reply - start))


def exchange(grid: Any, msgs: list, keys: list[Any], timeout: float | None, *,
             what: str = "replies", name: Callable[[Any], str] = str,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
             ) -> dict[Any, Any]:
    """Send ``msgs`` and collect replies: {key of the message: reply}, for the replies that came
    before the deadline (``timeout`` s, or None: derived from the first reply, see above).

    Replies are matched by ``reply_to_message_id``, not by sender: when a node dies, the SuperLink
    answers for it with an error reply whose sender is not that node. ``what`` and ``name`` (a key
    as a log line names it) make the waiting lines readable.
    """
    pending = {mid: key for mid, key in zip(grid.push_messages(msgs), keys) if mid is not None}
    start = clock()
    deadline = None if timeout is None else start + timeout
    next_log = start + WAIT_LOG_EVERY
    replies: dict[Any, Any] = {}
    while pending:
        for reply in grid.pull_messages(list(pending)):
            key = pending.pop(reply.metadata.reply_to_message_id, None)
            if key is not None:
                replies[key] = reply
        now = clock()
        if replies and deadline is None:
            deadline = auto_deadline(start, now)
        if not pending or (deadline is not None and now >= deadline):
            break
        if now >= next_log:
            left = "no deadline before the first reply" if deadline is None else f"{deadline - now:.0f} s left"
            logger.info("waiting %.0f s for %s of %s (%d of %d answered; %s)", now - start, what,
                        ", ".join(name(k) for k in pending.values()), len(replies), len(keys), left)
            next_log = now + WAIT_LOG_EVERY
        sleep(POLL)
    if pending:
        logger.warning("gave up after %.0f s waiting for %s of %s", clock() - start, what,
                       ", ".join(name(k) for k in pending.values()))
    return replies


def unlisted_failures(grid: Any, nodes: Mapping[int, int], jobs: Sequence[Any], gone: Mapping[int, str]
                      ) -> tuple[list[Any], list[Any]]:
    """(the jobs of nodes the SuperLink lists now, a ClientFailure for each of the others): a node
    that died is not sent the round (under secure aggregation it would cost every node a stage).
    ``gone``: {node: where it was lost} from earlier rounds, for the failure line."""
    listed = set(grid.get_node_ids())
    keep = [job for job in jobs if nodes[job.client_id] in listed]
    failures = []
    for job in jobs:
        node = nodes[job.client_id]
        if node not in listed:
            where = f"; {gone[node]}" if node in gone else ""
            failures.append(ClientFailure(job.client_id, f"client {job.client_id} (node {node}): not connected "
                                                         f"(the SuperLink no longer lists it{where})"))
    return keep, failures
