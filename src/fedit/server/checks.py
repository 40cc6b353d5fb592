"""Checks of client replies before aggregation: bad ones are dropped and logged, never averaged.

A reply is untrusted input: its adapter must match what the client was sent (keys, shapes,
floating dtypes) and be finite as float32, the precision the server aggregates in; its example
count must be a positive int; every metric must be one finite number, an int within 2**53 (a list,
a string, a NaN or a 10**18 drops that reply only, never the round).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import torch

from fedit.client.job import ClientUpdate
from fedit.errors import UpdateError
from fedit.model import AdapterState, check_adapter_state

logger = logging.getLogger(__name__)

MAX_INT_METRIC = 2**53  # the largest int a float64 holds exactly


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_metrics(client_id: int, metrics: Mapping[str, Any]) -> None:
    """Raise UpdateError unless every metric is a single finite int or float; an int must also
    be exact as a float64 (|n| <= 2**53): no count a node keeps comes near, and a bigger one would
    read as a float of any size (a train loss of 3e18) once averaged."""
    for name, value in metrics.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise UpdateError(f"client {client_id}: metric {_short(name)} is {_short(value)}, "
                              "expected a finite number")
        if isinstance(value, int) and abs(value) > MAX_INT_METRIC:
            raise UpdateError(f"client {client_id}: metric {_short(name)} is {_short(value)}, "
                              "an int beyond 2**53")


def check_update(reference: AdapterState, update: ClientUpdate) -> None:
    """Raise UpdateError (one line, naming the client) if the update cannot be aggregated."""
    count = update.num_examples
    if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
        raise UpdateError(f"client {update.client_id}: num_examples must be a positive int, got {_short(count)}")
    try:
        check_adapter_state(reference, update.state)
    except UpdateError as exc:
        raise UpdateError(f"client {update.client_id}: {exc}") from None
    check_metrics(update.client_id, update.metrics)


def update_norm(sent: AdapterState, state: AdapterState) -> float:
    """L2 norm of an update's delta from the adapter its client was sent, over every tensor
    (in float64, so that a huge but finite float32 update still has a finite norm)."""
    total = 0.0
    for key, ref in sent.items():
        diff = state[key].to(torch.float64) - ref.to(torch.float64)
        total += float(diff.square().sum())
    return math.sqrt(total)


def is_finite_state(state: Any) -> bool:
    """False when a (well-formed) adapter holds a NaN or an infinity as float32 (a diverged client)."""
    try:
        return all(bool(torch.isfinite(v.to(torch.float32)).all()) for v in state.values())
    except (AttributeError, TypeError, RuntimeError):
        return True  # malformed, not diverged: the checks say what is wrong with it


def filter_updates(reference: AdapterState | Mapping[int, AdapterState],
                   updates: Sequence[ClientUpdate]) -> tuple[list[ClientUpdate], list[str]]:
    """Split replies into valid updates and one-line failure messages (logged as warnings).

    ``reference``: the adapter every update must match, or {client id: adapter} when clients
    were sent different ones (each update is checked against what its client received).
    """
    good, failures = [], []
    per_client = bool(reference) and all(isinstance(k, int) for k in reference)
    for update in updates:
        try:
            check_update(reference[update.client_id] if per_client else reference, update)
        except UpdateError as exc:
            logger.warning("dropping update: %s", exc)
            failures.append(str(exc))
        else:
            good.append(update)
    return good, failures
