"""SCAFFOLD (Karimireddy et al., *SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning*, ICML 2020): control variates that correct each client's drift towards its own optimum.

Server state: the control variate c (zeros at first, the shapes of the global adapter). Each round:

    send      x and c to every sampled client (c in ``job.arrays["scaffold_c"]``)
    client i  trains with the gradient corrected by c - c_i and returns y_i and
              delta_c_i = c_i+ - c_i (fedit.client.scaffold)
    server    x <- x + server_lr * (average of y_i - x)
              c <- c + (1/N) * sum over the valid replies of delta_c_i  = c + (|S|/N) * mean(delta_c_i)

N is the number of all clients, so c stays exactly the mean of all N client variates (those never
sampled hold zeros) under partial participation, as in the paper.

Weighting. The average of the y_i is the run's aggregation (``super().aggregate_train``: FedAvg
weighted by examples, or what --lora-aggregation makes it), so SCAFFOLD composes with it and is
compared with FedAvg on the same weighting; the paper averages uniformly, and with equal-size
clients the two agree. The variates are averaged uniformly, as in the paper: that is what keeps
c = mean of all c_i exact when only some clients report (an example-weighted c would need every
client's size at the server). With unequal client sizes the correction therefore pulls towards
the clients' unweighted mean gradient (as OpenFedLLM's SCAFFOLD does, which weights the same way).

Communication: a second adapter-sized tensor each way (c down, delta_c_i up), i.e. twice FedAvg's
bytes. The replies' delta_c_i are checked in :meth:`Scaffold.receive` (keys, shapes, finite), a bad
one drops the reply. A dropped reply leaves that client's stored c_i ahead of what the server
counted; the invariant then holds only up to that client's share, 1/N of its delta.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from fedit.client.job import ClientJob, ClientUpdate, Scalar
from fedit.client.scaffold import CONFIG_KEY, DELTA_C, SERVER_C
from fedit.errors import UpdateError
from fedit.model import AdapterState, check_adapter_state
from fedit.server.aggregate import apply_delta, delta
from fedit.server.strategy import Strategy


class Scaffold(Strategy):
    name = "scaffold"
    factor_state = True
    needs_full_adapter = True
    # the control-variate deltas travel beside each update, outside what DP or SecAgg+ release
    needs_each_update = "--strategy scaffold"

    def __init__(self, *, server_lr: float, **base: Any) -> None:
        super().__init__(**base)
        self.server_lr = server_lr
        self.control: AdapterState | None = None

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        return {**super().client_config(round_idx, client_id), CONFIG_KEY: True}

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        if self.control is None:
            self.control = zeros_like(global_state)
        jobs = super().configure_train(round_idx, global_state)
        for job in jobs:
            job.arrays = {**job.arrays, SERVER_C: self.control}
        return jobs

    def receive(self, job: ClientJob, update: ClientUpdate) -> ClientUpdate:
        update = super().receive(job, update)
        dc = update.arrays.get(DELTA_C)
        if dc is None:
            raise UpdateError(f"client {update.client_id}: the reply has no '{DELTA_C}' array "
                              "(a client that does not run SCAFFOLD?)")
        try:
            check_adapter_state(job.arrays[SERVER_C], dc)
        except UpdateError as exc:
            raise UpdateError(f"client {update.client_id}: {DELTA_C}: {exc}") from None
        return update

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        avg, metrics = super().aggregate_train(round_idx, global_state, updates)
        new_state = apply_delta(global_state, delta(avg, global_state), self.server_lr)
        control = self.control if self.control is not None else zeros_like(global_state)
        self.control = {k: c + sum(u.arrays[DELTA_C][k].float() for u in updates) / self.num_clients
                        for k, c in control.items()}
        metrics["scaffold_c_norm"] = float(torch.sqrt(sum((v ** 2).sum() for v in self.control.values())))
        return new_state, metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "control": self.control}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.control = state.get("control")


def zeros_like(state: AdapterState) -> AdapterState:
    return {k: torch.zeros_like(v, dtype=torch.float32) for k, v in state.items()}
