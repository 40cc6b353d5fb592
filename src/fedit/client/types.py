"""What travels between the server and a client: the job a client is sent, the update it returns
(one client's, or a pooled one standing for several under secure aggregation) and what a client
keeps between its rounds. Plain data: the client function is fedit.client.job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedit.model import AdapterState

Scalar = bool | int | float | str
ClientState = dict[str, AdapterState]


@dataclass
class ClientJob:
    """What the server sends one client for one round."""

    client_id: int
    round: int
    state: AdapterState                                          # the global adapter (as this client sees it)
    config: dict[str, Scalar] = field(default_factory=dict)      # see CLIENT_KEYS
    arrays: dict[str, AdapterState] = field(default_factory=dict)  # extra tensors (e.g. a control variate)


@dataclass
class ClientUpdate:
    """What a client sends back: the adapter, its weight for aggregation, metrics, extra tensors."""

    client_id: int
    state: AdapterState
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, AdapterState] = field(default_factory=dict)


@dataclass
class PooledUpdate(ClientUpdate):
    """Several clients' updates released as one: what secure aggregation returns (the server never
    sees the members' adapters) and what DP-FedAvg hands its inner strategy (the noised mean).

    ``state`` is the members' mean adapter (weighted as ``weighting`` says), ``num_examples`` the sum
    of the members' example counts, ``metrics`` their pooled metrics; ``client_id`` is the first
    member, so the reply is checked against what that client was sent. ``member_metrics`` holds
    what each member reported besides its adapter (logged as its client record), ``round_metrics``
    what the pooling reports for the whole round (secure aggregation's bytes and messages).
    """

    client_ids: list[int] = field(default_factory=list)
    weighting: str = "examples"                   # "examples" (FedAvg) or "equal" (DP-FedAvg)
    member_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    member_examples: dict[int, int] = field(default_factory=dict)
    member_claims: dict[int, int] = field(default_factory=dict)   # each member's own claimed count
    round_metrics: dict[str, Any] = field(default_factory=dict)
