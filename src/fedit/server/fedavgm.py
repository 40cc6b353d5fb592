"""FedAvgM (Hsu et al., 2019): server momentum on the averaged update.

v <- momentum * v + (avg - w);  w <- w + server_lr * v.  With momentum 0 and server_lr 1
this is FedAvg. The momentum buffer is server state and is saved with each checkpoint.
"""

from __future__ import annotations

from typing import Any, Sequence

from fedit.client.job import ClientUpdate
from fedit.model import AdapterState
from fedit.server.aggregate import apply_delta, delta
from fedit.server.strategy import Strategy


class FedAvgM(Strategy):
    name = "fedavgm"
    factor_state = True

    def __init__(self, *, server_lr: float, server_momentum: float, **base: Any) -> None:
        super().__init__(**base)
        self.server_lr = server_lr
        self.server_momentum = server_momentum
        self.momentum: AdapterState | None = None

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        avg, metrics = super().aggregate_train(round_idx, global_state, updates)
        step = delta(avg, global_state)
        if self.momentum is None:
            self.momentum = step
        else:
            self.momentum = {k: self.server_momentum * self.momentum[k] + step[k] for k in step}
        return apply_delta(global_state, self.momentum, self.server_lr), metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.momentum = state.get("momentum")
