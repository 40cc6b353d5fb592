"""The Strategy base class: configure a round's client jobs, aggregate their replies.

As in Flower's ``Strategy``, a round is a configure/aggregate pair; server state (the sampler's
RNG, momentum buffers, optimizer moments) lives on the instance and is saved with each
checkpoint through ``state_dict``/``load_state_dict``. A strategy is built from explicit keyword
arguments (``FedAvgM(server_lr=1.0, server_momentum=0.9, num_clients=..., ...)``); variants
override only what differs (see fedavgm.py, fedprox.py). :class:`StrategyWrapper` wraps any
strategy to change what it sends or how it aggregates (the pattern of Flower's
``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``).
"""

from __future__ import annotations

import math
import sys
from abc import ABC
from typing import Any, ClassVar, Iterable, Sequence

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate, Scalar
from fedit.client_lora import ClientLora
from fedit.model import AdapterState
from fedit.registry import method
from fedit.server.aggregate import normalized_weights
from fedit.server.lora_aggregate import aggregate_lora, client_view
from fedit.server.sampling import ClientSampler


class Strategy(ABC):
    """``lora_aggregation`` (``--lora-aggregation``) says how client adapters are averaged (see
    fedit.server.lora_aggregate); ``client_lora`` maps the clients whose adapter is not the global
    one (a lower rank, fewer modules) to their layout: each gets its truncation of the global adapter
    and the ``lora_rank``/``lora_targets`` keys. Subclasses call ``super().aggregate_train`` for the
    average and apply their own step to it, so every strategy composes with every rule."""

    name: ClassVar[str] = "base"
    # Keeps server state per coordinate of the LoRA factors (momentum, moments, control variates):
    # meaningless when the factors are re-based every round (product-svd).
    factor_state: ClassVar[bool] = False
    # Needs every client to train the whole global adapter (e.g. SCAFFOLD's control variates).
    needs_full_adapter: ClassVar[bool] = False
    # The flag that makes a strategy read every client's own update (a robust aggregator, say):
    # refused with --secure-aggregation, which gives the server only their sum. None: sums will do.
    needs_each_update: ClassVar[str | None] = None
    # aggregate_train(..., []) is meaningful for a round that sampled nobody (DP-FedAvg's noise):
    # the round loop calls it then; otherwise such a round keeps the global adapter.
    releases_empty_rounds: ClassVar[bool] = False

    def __init__(self, *, num_clients: int, clients_per_round: int, seed: int, lora_aggregation: str = "factors",
                 hetero_rule: str = "paper", client_lora: dict[int, ClientLora] | None = None) -> None:
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.sampler = ClientSampler(num_clients, seed)
        self.lora_aggregation = lora_aggregation
        self.hetero_rule = hetero_rule
        # clients train and send only part of the adapter (ffa: B alone)
        self.b_only = method("aggregation", lora_aggregation).capabilities.partial_adapter
        self.client_lora = dict(client_lora or {})

    def describe(self) -> str:
        return self.name

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        """The jobs of this round: one per sampled client, each with its view of the global
        adapter and its client config."""
        return [ClientJob(cid, round_idx, self.client_state(cid, global_state), self.client_config(round_idx, cid))
                for cid in self.sampler.sample(self.clients_per_round)]

    def client_state(self, client_id: int, global_state: AdapterState) -> AdapterState:
        """The part of the global adapter ``client_id`` trains: its rank and modules; B only under ffa."""
        layout = self.client_lora.get(client_id)
        b_only = self.b_only
        if layout is None and not b_only:
            return global_state
        if layout is None:
            return client_view(global_state, None, "all-linear", b_only=True)
        return client_view(global_state, layout.rank, layout.targets, b_only=b_only)

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        """Keys of fedit.client.job.CLIENT_KEYS this strategy sets for a client (FedAvg: only the
        adapter layout of a client that trains a smaller one)."""
        layout = self.client_lora.get(client_id)
        return {} if layout is None else {"lora_rank": layout.rank, "lora_targets": layout.targets}

    def receive(self, job: ClientJob, update: ClientUpdate) -> ClientUpdate:
        """A reply as the server reads it, before it is checked against ``job``: the identity here;
        a wrapper may decode it (e.g. decompress an update), a method may check its own parts of it
        (SCAFFOLD's control-variate delta). Raise :class:`fedit.errors.UpdateError` (one line, naming
        the client) to drop a reply that cannot be used: the round goes on without it."""
        return update

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        """New global adapter from valid updates, weighted by number of examples: FedAvg, with the
        LoRA factors combined as ``--lora-aggregation`` says."""
        weights = [u.num_examples for u in updates]
        metrics = train_metrics(updates, weights)
        pooled = any(isinstance(u, PooledUpdate) for u in updates)  # pooled: the factors are not seen
        state, lora_metrics = aggregate_lora(self.lora_aggregation, global_state, [u.state for u in updates], weights,
                                             gap=not pooled, hetero_rule=self.hetero_rule)
        metrics.update(lora_metrics)
        return state, metrics

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


def train_metrics(updates: Sequence[ClientUpdate], weights: Sequence[float]) -> dict[str, Any]:
    """The round record's client summary: who took part, examples, weighted train loss."""
    w = normalized_weights(weights)
    out: dict[str, Any] = {}
    for u in updates:
        out.update(u.round_metrics if isinstance(u, PooledUpdate) else {})
    return {
        **out,
        "clients": [cid for u in updates for cid in member_ids(u)],
        "num_examples": int(sum(u.num_examples for u in updates)),
        "train_loss": sum(wk * u.metrics.get("train_loss", 0.0) for wk, u in zip(w, updates)),
    }


def member_ids(update: ClientUpdate) -> list[int]:
    """The clients an update stands for: its own, or every member of a pooled update."""
    return list(update.client_ids) if isinstance(update, PooledUpdate) else [update.client_id]


def pool_updates(updates: Sequence[ClientUpdate], state: AdapterState, weighting: str) -> PooledUpdate:
    """One pooled update standing for ``updates`` (already pooled ones are flattened): ``state`` is
    their mean as computed by the caller; metrics: example-weighted train loss, summed compute time."""
    members = [cid for u in updates for cid in member_ids(u)]
    member_metrics: dict[int, dict[str, float]] = {}
    member_examples: dict[int, int] = {}
    for u in updates:
        member_metrics.update(u.member_metrics if isinstance(u, PooledUpdate) else {u.client_id: u.metrics})
        member_examples.update(u.member_examples if isinstance(u, PooledUpdate) else {u.client_id: u.num_examples})
    total = sum(u.num_examples for u in updates)
    metrics = {"train_loss": mean_metric([u.metrics.get("train_loss", 0.0) for u in updates],
                                          [u.num_examples for u in updates]),
               "compute_seconds": finite_sum(u.metrics.get("compute_seconds", 0.0) for u in updates)}
    round_metrics = {k: v for u in updates if isinstance(u, PooledUpdate) for k, v in u.round_metrics.items()}
    return PooledUpdate(members[0], state, total, metrics, client_ids=members, weighting=weighting,
                        member_metrics=member_metrics, member_examples=member_examples, round_metrics=round_metrics)


def mean_metric(values: Sequence[float], weights: Sequence[float]) -> float:
    """A weighted mean that no finite value overflows (weights normalised first; 1e308 stays finite)."""
    w = normalized_weights(weights)
    mean = math.fsum(wk * v for wk, v in zip(w, values))
    return min(max(mean, min(values)), max(values)) if math.isfinite(mean) else mean


def finite_sum(values: Iterable[float]) -> float:
    """A sum of finite values that stays finite (clamped to the largest float)."""
    total = sum(values)
    return max(min(total, sys.float_info.max), -sys.float_info.max)


def base_strategy(strategy: Strategy) -> Strategy:
    """The innermost strategy under any wrappers (the one that owns the client sampler)."""
    while isinstance(strategy, StrategyWrapper):
        strategy = strategy.inner
    return strategy


class StrategyWrapper(Strategy):
    """A strategy around another: by default every call goes to ``inner``; a wrapper overrides
    what it changes and adds its own state under its own key of the checkpoint."""

    name: ClassVar[str] = "wrapper"

    def __init__(self, inner: Strategy) -> None:  # no super().__init__: the inner strategy samples
        self.inner = inner

    @property
    def num_clients(self) -> int:  # type: ignore[override]
        return self.inner.num_clients

    @property
    def clients_per_round(self) -> int:  # type: ignore[override]
        return self.inner.clients_per_round

    @property
    def sampler(self) -> ClientSampler:  # type: ignore[override]
        return self.inner.sampler

    @property
    def factor_state(self) -> bool:  # type: ignore[override]
        return self.inner.factor_state

    @property
    def needs_full_adapter(self) -> bool:  # type: ignore[override]
        return self.inner.needs_full_adapter

    @property
    def releases_empty_rounds(self) -> bool:  # type: ignore[override]
        return self.inner.releases_empty_rounds

    def describe(self) -> str:
        return f"{self.name}({self.inner.describe()})"

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        return self.inner.configure_train(round_idx, global_state)

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        return self.inner.client_config(round_idx, client_id)

    def receive(self, job: ClientJob, update: ClientUpdate) -> ClientUpdate:
        return self.inner.receive(job, update)

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        return self.inner.aggregate_train(round_idx, global_state, updates)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
