"""FedProx (Li et al., 2020): FedAvg aggregation, clients add mu/2 * ||w - w_global||^2."""

from __future__ import annotations

from typing import Any

from fedit.server.strategy import Strategy


class FedProx(Strategy):
    name = "fedprox"

    def configure_train(self, round_idx: int) -> tuple[list[int], dict[str, Any]]:
        clients, config = super().configure_train(round_idx)
        config["proximal_mu"] = self.train.proximal_mu
        return clients, config
