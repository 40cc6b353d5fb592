"""Client sampling with its own seeded RNG, whose state is saved with every checkpoint.

``fixed`` (:class:`ClientSampler`): k distinct clients per round, without replacement.
``poisson`` (:class:`PoissonSampler`, ``--client-sampling poisson``): every client joins a round
independently with probability q = k / N, so a round has a varying number of clients (k on
average, possibly none): the sampling that DP accountants' add/remove analysis assumes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FIXED, POISSON = "fixed", "poisson"


class ClientSampler:
    """Samples k distinct client ids per round without touching any global RNG."""

    kind = FIXED

    def __init__(self, num_clients: int, seed: int) -> None:
        self.num_clients = num_clients
        self._rng = np.random.default_rng([seed, 0x5A3F])

    def sample(self, k: int) -> list[int]:
        if not 1 <= k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        return sorted(self._rng.choice(self.num_clients, size=k, replace=False).tolist())

    def reseeded(self, seed: int) -> "ClientSampler":
        """A sampler of the same kind drawing from ``seed`` (DP-FedAvg's secret seed)."""
        return type(self)(self.num_clients, seed)

    def state_dict(self) -> dict[str, Any]:
        return {"num_clients": self.num_clients, "kind": self.kind, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind", FIXED) != self.kind:
            raise ValueError(f"checkpoint sampled clients with {state.get('kind', FIXED)!r}, not {self.kind!r}")
        self.num_clients = state["num_clients"]
        self._rng.bit_generator.state = state["bit_generator"]


class PoissonSampler(ClientSampler):
    """Each client joins independently with probability k / N: k clients on average, maybe none."""

    kind = POISSON

    def sample(self, k: int) -> list[int]:
        if not 1 <= k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        joins = self._rng.random(self.num_clients) < k / self.num_clients
        return np.flatnonzero(joins).tolist()


def make_sampler(kind: str, num_clients: int, seed: int) -> ClientSampler:
    return (PoissonSampler if kind == POISSON else ClientSampler)(num_clients, seed)
