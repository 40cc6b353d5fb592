"""How much each client may weigh in an average: claimed example counts are not taken on trust.

FedAvg weights each update by the number of examples its client claims. Unchecked, one client
that claims 10**12 examples replaces the global adapter with its own. Two limits, applied by the
round loop to every valid update before the strategy sees it (so every strategy gets them):

1. **Count cap.** A claim is capped at the size the server knows for that client (the simulation:
   the client's partition; Flower: the record count its node reported at the roll call, in
   ``nodes.json``) and at ``--max-client-examples`` when set. A client whose size the server
   does not know is capped at the largest size it knows (or ``--max-client-examples``).
2. **Share limit.** No client's weight exceeds ``max(--max-client-share, 1/m)`` of the round's
   total over its ``m`` valid updates (default 0.5: one client never outweighs all the others
   together). Counts above the limit are cut to one common integer cap ``c``, the largest for
   which ``min(n_i, c) <= share * sum_j min(n_j, c)`` for every client, so the strategy still
   receives integer counts.

Honest clients are affected only by the share limit, and only in a round where one of them holds
more than that share of the round's examples (then it weighs exactly the limit).

With few clients the limit still lets one client weigh a lot (0.5 with three clients: as much as
the two others together), so a client that weighs more than an equal share while its update's norm
is far above the others' gets a warning (:func:`dominant_outliers`).
"""

from __future__ import annotations

import statistics
from typing import Mapping


def capped_count(claimed: int, known: int | None, bound: int | None) -> int:
    """A claim capped by what the server knows (``known``) and the configured ``bound``."""
    caps = [c for c in (known, bound) if c is not None and c > 0]
    return min([claimed, *caps])


def default_caps(client_ids: list[int], known: Mapping[int, int], bound: int | None) -> dict[int, int | None]:
    """The known size of each client; for clients the server knows nothing of, the largest
    size it knows of any client (None when it knows none: then only ``bound`` applies)."""
    largest = max((n for n in known.values() if n > 0), default=None)
    return {cid: known.get(cid) if known.get(cid, 0) > 0 else largest for cid in client_ids}


def share_cap(counts: list[int], max_share: float) -> int:
    """The largest integer ``c`` with ``max_i min(n_i, c) <= s * sum_j min(n_j, c)``, where
    ``s = max(max_share, 1/len(counts))``. The slack of that inequality is concave in ``c`` and
    non-negative at ``c = min(counts)``, so the feasible ``c`` form an interval: bisect it."""
    share = max(max_share, 1.0 / len(counts))

    def fits(c: int) -> bool:
        clipped = [min(n, c) for n in counts]
        return max(clipped) <= share * sum(clipped) * (1 + 1e-12)

    lo, hi = min(counts), max(counts)
    if fits(hi):
        return hi
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def trusted_counts(claims: Mapping[int, int], known: Mapping[int, int], bound: int | None,
                   max_share: float) -> dict[int, int]:
    """{client: the count it is weighted by}: claims capped (1.), then share-limited (2.)."""
    if not claims:
        return {}
    caps = default_caps(list(claims), known, bound)
    counts = {cid: capped_count(n, caps[cid], bound) for cid, n in claims.items()}
    if max_share < 1:
        c = share_cap(list(counts.values()), max_share)
        counts = {cid: min(n, c) for cid, n in counts.items()}
    return counts


OUTLIER_RATIO = 10.0   # an update this many times the others' median norm is worth a warning


def dominant_outliers(claims: Mapping[int, int], counts: Mapping[int, int], norms: Mapping[int, float],
                      ratio: float = OUTLIER_RATIO) -> list[str]:
    """One line per client that weighs more than an equal share of the round (its claim made it so:
    honest ones rarely do) and whose update's norm is over ``ratio`` times the others' median: the
    share limit bounds its weight, not what it sends. A warning, never a drop (norms differ
    honestly too); --robust bounds such an update."""
    total, lines = sum(counts.values()), []
    if len(norms) < 2 or total <= 0:
        return lines
    for cid, norm in norms.items():
        median = statistics.median(n for c, n in norms.items() if c != cid)
        share = counts[cid] / total
        if share > 1 / len(counts) and median > 0 and norm > ratio * median:
            lines.append(f"client {cid} claims {claims[cid]} examples and weighs {share:.0%} of the round, and its "
                         f"update's norm is {norm / median:.0f}x the others' median: a lower --max-client-share or "
                         "--robust bounds it")
    return lines
