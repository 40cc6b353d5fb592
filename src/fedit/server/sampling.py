"""Client sampling with its own seeded RNG, whose state is saved with every checkpoint."""

from __future__ import annotations

from typing import Any

import numpy as np


class ClientSampler:
    """Samples k distinct client ids per round without touching any global RNG."""

    def __init__(self, num_clients: int, seed: int) -> None:
        self.num_clients = num_clients
        self._rng = np.random.default_rng([seed, 0x5A3F])

    def sample(self, k: int) -> list[int]:
        if not 1 <= k <= self.num_clients:
            raise ValueError(f"cannot sample {k} of {self.num_clients} clients")
        return sorted(self._rng.choice(self.num_clients, size=k, replace=False).tolist())

    def state_dict(self) -> dict[str, Any]:
        return {"num_clients": self.num_clients, "bit_generator": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_clients = state["num_clients"]
        self._rng.bit_generator.state = state["bit_generator"]
