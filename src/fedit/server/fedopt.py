"""Adaptive server optimizers (Reddi et al., *Adaptive Federated Optimization*, ICLR 2021):
the shared part of FedAdam, FedYogi and FedAdagrad.

The server treats the round's averaged update as a pseudo-gradient and applies an adaptive
optimizer to it, per coordinate (Algorithm 2 of the paper):

    delta_t = average_t - x_t                       (the run's average: FedAvg by examples, or
                                                     whatever --lora-aggregation makes it)
    m_t     = beta1 * m_{t-1} + (1 - beta1) * delta_t
    v_t     = second_moment(v_{t-1}, delta_t)       (Adam / Yogi / Adagrad: the subclasses)
    x_{t+1} = x_t + server_lr * m_t / (sqrt(v_t) + tau)

with m_{-1} = 0 and v_{-1} = tau^2 (the paper asks for v_{-1} >= tau^2).

Variant, and why: this is the paper's Algorithm 2 as written, for all three methods, with no bias
correction. Flower's implementations (flwr/serverapp/strategy/fedadam.py, fedyogi.py,
fedadagrad.py) differ in three places: they start v at 0 instead of tau^2; their FedAdam (only)
multiplies the step by Adam's bias correction sqrt(1 - beta2^(t+1)) / (1 - beta1^(t+1)); their
FedAdagrad fixes beta1 = 0 (no momentum). fedit follows the paper so that one set of formulas,
stated here and in docs/methods.md, covers the three methods and can be checked by hand; Flower's
FedAdagrad is ``--server-beta1 0``. Without bias correction the first rounds are not small steps:
when |delta| >> tau the step is about server_lr * sign(delta) per coordinate from round 1 on
(m and sqrt(v) are both scaled by (1 - beta1) and sqrt(1 - beta2) there), which is also why
--server-lr's default for these methods is small (fedit.config.default_server_lr).

The moments are server state: saved with every checkpoint, restored exactly by --resume.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Sequence

import torch

from fedit.client.job import ClientUpdate
from fedit.model import AdapterState
from fedit.server.aggregate import apply_delta, delta
from fedit.server.strategy import Strategy


class FedOpt(Strategy):
    """Reddi et al.'s Algorithm 2; a subclass supplies :meth:`second_moment`."""

    name = "fedopt"
    factor_state = True

    def __init__(self, *, server_lr: float, server_beta1: float, server_beta2: float, server_tau: float,
                 **base: Any) -> None:
        super().__init__(**base)
        self.server_lr = server_lr
        self.beta1, self.beta2, self.tau = server_beta1, server_beta2, server_tau
        self.m: AdapterState | None = None
        self.v: AdapterState | None = None

    @abstractmethod
    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """v_t from v_{t-1} and the pseudo-gradient delta_t (one tensor)."""

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        avg, metrics = super().aggregate_train(round_idx, global_state, updates)
        d = delta(avg, global_state)
        if self.m is None or self.v is None:
            self.m = {k: torch.zeros_like(t) for k, t in d.items()}
            self.v = {k: torch.full_like(t, self.tau ** 2) for k, t in d.items()}
        self.m = {k: self.beta1 * self.m[k] + (1 - self.beta1) * d[k] for k in d}
        self.v = {k: self.second_moment(self.v[k], d[k]) for k in d}
        step = {k: self.m[k] / (self.v[k].sqrt() + self.tau) for k in d}
        return apply_delta(global_state, step, self.server_lr), metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "m": self.m, "v": self.v}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.m, self.v = state.get("m"), state.get("v")
