"""What the released adapter leaks: the canaries of ``--audit-canaries`` (fedit.privacy.canaries).

- *Exposure* (Carlini et al. 2019) of every canary: the rank of its secret's loss under the final
  adapter among ``references`` random secrets of the same form and name (log2(R + 1) at most; a
  canary never inserted is a baseline near 1 on average);
- a *membership test* on the final adapter: a canary's score is how much training lowered its
  loss (loss under the run's initial adapter minus loss under the final one); inserted canaries are
  the members, the others the non-members; :func:`fedit.audit.stats.epsilon_lower_bound` turns it
  into an empirical epsilon lower bound at the run's delta.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fedit.audit.stats import epsilon_lower_bound, exposure
from fedit.data import Example
from fedit.errors import ConfigError
from fedit.privacy.canaries import canary_record

LossFn = Callable[[dict, Sequence[Example]], list[float]]


def pick(record: dict[str, Any], count: int | None) -> list[dict[str, Any]]:
    """``count`` inserted and ``count`` never-inserted canaries of the run (all by default)."""
    canaries = record["canaries"]
    have = sum(c["inserted"] for c in canaries)
    if count is None:
        return canaries
    if count > have:
        raise ConfigError(f"--audit-canaries: {count} is more than the {have} canaries the run inserted")
    inserted = [c for c in canaries if c["inserted"]][:count]
    return inserted + [c for c in canaries if not c["inserted"]][:count]


def canary_audit(losses: LossFn, final: dict, initial: dict, record: dict[str, Any], *, count: int | None,
                 references: int, seed: int, delta: float, confidence: float) -> dict[str, Any]:
    chosen = pick(record, count)
    records = [canary_record(c["name"], c["digits"]) for c in chosen]
    after, before = losses(final, records), losses(initial, records)
    rng = np.random.default_rng([seed, 0xE4F0])
    rows = []
    for c, loss_after, loss_before in zip(chosen, after, before):
        refs = [canary_record(c["name"], rng.integers(0, 10, len(c["digits"])).tolist()) for _ in range(references)]
        rows.append({"name": c["name"], "inserted": c["inserted"], "client": c.get("client"),
                     "loss_before": loss_before, "loss_after": loss_after,
                     "exposure": exposure(loss_after, losses(final, refs))})
    members = [r["loss_before"] - r["loss_after"] for r in rows if r["inserted"]]
    others = [r["loss_before"] - r["loss_after"] for r in rows if not r["inserted"]]
    bound = epsilon_lower_bound(members, others, delta, confidence)
    inserted = [r["exposure"] for r in rows if r["inserted"]]
    baseline = [r["exposure"] for r in rows if not r["inserted"]]
    return {"repeats": record["repeats"], "references": references, "max_exposure": float(np.log2(references + 1)),
            "exposure": inserted, "exposure_mean": float(np.mean(inserted)),
            "exposure_not_inserted_mean": float(np.mean(baseline)) if baseline else None,
            **bound, "delta": delta, "per_canary": rows}
