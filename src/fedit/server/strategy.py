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

from abc import ABC
from typing import Any, ClassVar, Sequence

from fedit.client.job import ClientJob, ClientUpdate, Scalar
from fedit.model import AdapterState
from fedit.server.aggregate import lora_product_gap, normalized_weights, weighted_mean
from fedit.server.sampling import ClientSampler


class Strategy(ABC):
    name: ClassVar[str] = "base"
    # Keeps server state per LoRA-factor coordinate across rounds (momentum, moments, control
    # variates): such state only makes sense if the factors keep their meaning from round to round,
    # which a re-factorisation of the aggregate (product-svd) does not preserve.
    factor_state: ClassVar[bool] = False
    # Every client must train the full global adapter (e.g. SCAFFOLD's control variates have the
    # global adapter's shapes), so clients with smaller ranks or fewer modules are refused.
    needs_full_adapter: ClassVar[bool] = False

    def __init__(self, *, num_clients: int, clients_per_round: int, seed: int) -> None:
        self.num_clients = num_clients
        self.clients_per_round = clients_per_round
        self.sampler = ClientSampler(num_clients, seed)

    def describe(self) -> str:
        return self.name

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        """The jobs of this round: one per sampled client, each with its client config."""
        return [ClientJob(cid, round_idx, global_state, self.client_config(round_idx, cid))
                for cid in self.sampler.sample(self.clients_per_round)]

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        """Keys of fedit.client.job.CLIENT_KEYS this strategy sets for a client (none for FedAvg)."""
        return {}

    def receive(self, job: ClientJob, update: ClientUpdate) -> ClientUpdate:
        """A reply as the server reads it, before it is checked against ``job``: the identity here;
        a wrapper may decode it (e.g. decompress an update), a method may check its own parts of it
        (SCAFFOLD's control-variate delta). Raise :class:`fedit.errors.UpdateError` (one line, naming
        the client) to drop a reply that cannot be used: the round goes on without it."""
        return update

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        """New global adapter from valid updates, weighted by number of examples (FedAvg)."""
        weights = [u.num_examples for u in updates]
        states = [u.state for u in updates]
        metrics = train_metrics(updates, weights)
        metrics.update(lora_product_gap(states, weights))
        return weighted_mean(states, weights), metrics

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])


def train_metrics(updates: Sequence[ClientUpdate], weights: Sequence[float]) -> dict[str, Any]:
    """The round record's client summary: who took part, examples, weighted train loss."""
    w = normalized_weights(weights)
    return {
        "clients": [u.client_id for u in updates],
        "num_examples": int(sum(u.num_examples for u in updates)),
        "train_loss": sum(wk * u.metrics.get("train_loss", 0.0) for wk, u in zip(w, updates)),
    }


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
