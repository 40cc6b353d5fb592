"""Which node is which client: the roll call's answers turned into client indices 0..n-1.

A node may pin its index (node config ``client-index``); the others take the free ones. A pinned
node refuses a job for any other index, so a node whose claim cannot be honoured cannot simply be
re-indexed: it is left out, with one line, and the run goes on with the rest (while --min-nodes
remain). Left out are:

* every node but one claiming an index another node claims too: the server cannot tell which one
  is misconfigured or lying, so the node with the lowest node id (assigned by the SuperLink, not
  chosen by the node) keeps the index; leaving out all of them would leave a gap in 0..n-1 that
  pushes honest nodes out of range;
* a node claiming an index beyond the nodes that take part (indices are 0..n-1), checked again
  after each removal, since n shrinks.

A node with no claim is never left out. One node's answer can no longer stop the run.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence


def assign_indices(pinned: Mapping[int, int], free: Sequence[int]) -> tuple[dict[int, int], list[str]]:
    """({client index: node id}, one line per node left out) from {node: the index it claims}
    and the nodes that claim none (in the order they are given indices)."""
    claims: dict[int, list[int]] = defaultdict(list)
    for node, index in pinned.items():
        claims[index].append(node)
    notes = []
    kept = {}
    for index, nodes in sorted(claims.items()):
        if len(nodes) == 1:
            kept[nodes[0]] = index
            continue
        keeper, *others = sorted(nodes)
        kept[keeper] = index
        notes.append(f"node{'s' if len(others) > 1 else ''} {', '.join(map(str, others))} also claim"
                     f"{'' if len(others) > 1 else 's'} client-index={index} of node {keeper}: "
                     f"{'they take' if len(others) > 1 else 'it takes'} no part (the lowest node id keeps an index "
                     "claimed twice)")
    while True:
        total = len(kept) + len(free)
        out = sorted((i, n) for n, i in kept.items() if i >= total)
        if not out:
            break
        index, node = out[-1]   # the highest first: removing it may bring the others into range
        del kept[node]
        notes.append(f"node {node} claims client-index={index}, but only {total} node(s) take part "
                     f"(indices 0..{total - 1}): it takes no part")
    open_ids = sorted(set(range(len(kept) + len(free))) - set(kept.values()))
    clients = {index: node for node, index in kept.items()}
    clients.update(zip(open_ids, free))
    return dict(sorted(clients.items())), notes
