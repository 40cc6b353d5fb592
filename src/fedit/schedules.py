"""Learning-rate schedules across a whole federation: plain functions of a schedule position.

A schedule runs over ``total`` schedule steps; ``--lr-schedule-unit`` says what one step is:

- ``round`` (default, as OpenFedLLM): step ``r - 1`` is round ``r``, ``total`` is the number of
  rounds; every local step of round ``r`` uses ``lr_at(r - 1)`` (the server sends it as the job's
  ``lr``). With no warmup, cosine gives OpenFedLLM's ``0.5 * lr * (1 + cos(pi * (r - 1) / R))``.
- ``step``: step ``(r - 1) * S + s - 1`` is local step ``s`` of round ``r`` of a client that takes
  ``S`` steps per round, ``total = R * S``: the lr decays within rounds as well, as if the client
  took part in every round (the client computes it from the schedule the job names).

Warmup: the first ``warmup`` steps rise linearly from ``peak / (warmup + 1)`` to just below the
peak, which step ``warmup`` reaches; the decay runs over the steps after it. Positions past the
end of the schedule keep its last value (cosine and linear end at 0). Torch-free: the server's
wrapper and the client's optimizer both call it.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "linear")


def lr_at(peak: float, shape: str, position: int, total: int, warmup: int = 0) -> float:
    """The learning rate of schedule step ``position`` (0-based) of ``total``."""
    if shape not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {shape!r} (known: {', '.join(SCHEDULES)})")
    if position < warmup:
        return peak * (position + 1) / (warmup + 1)
    if shape == "constant":
        return peak
    progress = min(1.0, max(0.0, (position - warmup) / max(1, total - warmup)))
    if shape == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    return peak * (1.0 - progress)


def round_lr(peak: float, shape: str, round_idx: int, rounds: int, warmup: int = 0) -> float:
    """``--lr-schedule-unit round``: the lr of every local step of round ``round_idx`` (1-based)."""
    return lr_at(peak, shape, round_idx - 1, rounds, warmup)


def step_lr(peak: float, shape: str, round_idx: int, rounds: int, step: int, steps_per_round: int,
            warmup: int = 0) -> float:
    """``--lr-schedule-unit step``: the lr of local step ``step`` (0-based) of round ``round_idx``
    (1-based) for a client that takes ``steps_per_round`` steps per round."""
    position = (round_idx - 1) * steps_per_round + step
    return lr_at(peak, shape, position, rounds * steps_per_round, warmup)
