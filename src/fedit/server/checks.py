"""Checks of client replies before aggregation: bad ones are dropped and logged, never averaged."""

from __future__ import annotations

import logging
import math
from typing import Mapping, Sequence

from fedit.client.job import ClientUpdate
from fedit.errors import UpdateError
from fedit.model import AdapterState, check_adapter_state

logger = logging.getLogger(__name__)


def check_update(reference: AdapterState, update: ClientUpdate) -> None:
    """Raise UpdateError (one line, naming the client) if the update cannot be aggregated."""
    if not isinstance(update.num_examples, int) or update.num_examples <= 0:
        raise UpdateError(f"client {update.client_id}: num_examples must be a positive int, "
                          f"got {update.num_examples!r}")
    try:
        check_adapter_state(reference, update.state)
    except UpdateError as exc:
        raise UpdateError(f"client {update.client_id}: {exc}") from None
    for name, value in update.metrics.items():
        if isinstance(value, float) and not math.isfinite(value) and name == "train_loss":
            raise UpdateError(f"client {update.client_id}: train_loss is {value}")


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
