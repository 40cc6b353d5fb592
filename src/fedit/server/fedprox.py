"""FedProx (Li et al., 2020): FedAvg aggregation; clients add mu/2 * ||w - w_global||^2 to their
loss, through the ``proximal_mu`` key of their client config (see fedit.client.job)."""

from __future__ import annotations

from typing import Any

from fedit.client.job import Scalar
from fedit.server.strategy import Strategy


class FedProx(Strategy):
    name = "fedprox"

    def __init__(self, *, proximal_mu: float, **base: Any) -> None:
        super().__init__(**base)
        self.proximal_mu = proximal_mu

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        return {**super().client_config(round_idx, client_id), "proximal_mu": self.proximal_mu}
