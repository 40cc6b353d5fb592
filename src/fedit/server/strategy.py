"""The Strategy base class: configure a round, aggregate its replies, evaluate the result.

As in Flower's ``Strategy``, a round is a configure/aggregate pair; server state (the sampler's
RNG, momentum buffers) lives on the instance and is saved with each checkpoint through
``state_dict``/``load_state_dict``. Variants override only what differs (see fedavgm.py, fedprox.py).
"""

from __future__ import annotations

from abc import ABC
from typing import Any, Callable, ClassVar, Sequence

from fedit.client.train import ClientUpdate
from fedit.config import FederationConfig, TrainConfig
from fedit.model import AdapterState
from fedit.server.aggregate import lora_product_gap, normalized_weights, weighted_mean
from fedit.server.sampling import ClientSampler

EvaluateFn = Callable[[int, AdapterState], dict[str, Any]]


class Strategy(ABC):
    name: ClassVar[str] = "base"

    def __init__(self, fed: FederationConfig, train: TrainConfig, num_clients: int,
                 evaluate_fn: EvaluateFn | None = None) -> None:
        self.fed = fed
        self.train = train
        self.num_clients = num_clients
        self.sampler = ClientSampler(num_clients, fed.seed)
        self.evaluate_fn = evaluate_fn

    def configure_train(self, round_idx: int) -> tuple[list[int], dict[str, Any]]:
        """The clients of this round and the config every one of them trains with."""
        clients = self.sampler.sample(self.fed.clients_to_sample(self.num_clients))
        return clients, {"round": round_idx, "proximal_mu": 0.0}

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        """New global adapter from valid updates, weighted by number of examples (FedAvg)."""
        weights = [u.num_examples for u in updates]
        states = [u.state for u in updates]
        metrics = self._train_metrics(updates, weights)
        metrics.update(lora_product_gap(states, weights))
        return weighted_mean(states, weights), metrics

    def evaluate(self, round_idx: int, state: AdapterState) -> dict[str, Any]:
        return self.evaluate_fn(round_idx, state) if self.evaluate_fn else {}

    @staticmethod
    def _train_metrics(updates: Sequence[ClientUpdate], weights: Sequence[float]) -> dict[str, Any]:
        w = normalized_weights(weights)
        return {
            "clients": [u.client_id for u in updates],
            "num_examples": int(sum(weights)),
            "train_loss": sum(wk * u.metrics.get("train_loss", 0.0) for wk, u in zip(w, updates)),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state["sampler"])
