"""SCAFFOLD on the client (Karimireddy et al., 2020): the drift correction and the client's
control variate.

A SCAFFOLD job carries ``scaffold: True`` in its client config and the server's control variate
c in ``job.arrays["scaffold_c"]``; the client keeps its own variate c_i in its client state
(zeros until its first round). In every local step the gradient g of the data loss becomes
g + (c - c_i) (before clipping, as every fedit correction). After training the client sets

    c_i+ = (1/K) * sum of the K steps' gradients g      (of the data loss, before the correction)

sends delta_c_i = c_i+ - c_i in ``update.arrays["scaffold_dc"]`` and keeps c_i+ for its next round.

Why this form of option II. The paper's option II is c_i+ = c_i - c + (x - y_i) / (K * lr), with
x the global adapter, y_i the trained one and lr the local learning rate. With plain SGD at a
constant lr, y_i = x - lr * sum_k (g_k + c - c_i), so (x - y_i) / (K * lr) = mean(g) + c - c_i and
option II *is* the mean of the step gradients (tests/unit/test_scaffold.py checks the identity).
fedit's clients train with AdamW, where (x - y_i) / (K * lr) is the mean AdamW step direction
m_hat / (sqrt(v_hat) + eps) (plus weight decay): a unit-free number of order 1 per coordinate,
not a gradient. Used as a gradient correction it would add terms three to five orders of magnitude
larger than the LoRA gradients (measured on SmolLM2: docs/methods.md) and drown the data's signal. So fedit computes what option II estimates, the
mean gradient along the local trajectory, directly: exact option II under SGD, in the right units
under AdamW, at the cost of one adapter-sized buffer during training and no extra pass.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable

import torch

from fedit.errors import ConfigError, UpdateError
from fedit.model import AdapterState, check_adapter_state

if TYPE_CHECKING:  # fedit.client.job imports this module
    from fedit.client.job import ClientJob, ClientUpdate

CONFIG_KEY = "scaffold"          # job.config: the server runs SCAFFOLD
SERVER_C = "scaffold_c"          # job.arrays: the server's control variate c
DELTA_C = "scaffold_dc"          # update.arrays: c_i+ - c_i
CLIENT_C = "scaffold_c"          # client state: the client's own control variate c_i
GRAD_SUM = "scaffold_grad_sum"   # client state, during one job only: the sum of the step gradients


def server_variate(job: ClientJob) -> AdapterState:
    """c from the job; ConfigError (one line) if it is missing or does not match the adapter."""
    c = job.arrays.get(SERVER_C)
    if c is None:
        raise ConfigError(f"client config {CONFIG_KEY}: the job carries no '{SERVER_C}' array")
    try:
        check_adapter_state(job.state, c)
    except UpdateError as exc:
        raise ConfigError(f"job array {SERVER_C}: {exc}") from None
    return c


def scaffold_correction(job: ClientJob, device: torch.device,
                        state: dict[str, AdapterState]) -> Callable[[Mapping[str, torch.nn.Parameter]], None] | None:
    """The correction g <- g + (c - c_i) of every step, which also sums the uncorrected g into
    ``state[GRAD_SUM]`` for :func:`scaffold_variates`; None for a job without SCAFFOLD."""
    if not job.config.get(CONFIG_KEY):
        return None
    c, c_i = server_variate(job), state.get(CLIENT_C, {})
    shift = {k: (v.float() - c_i[k].float() if k in c_i else v.float()).to(device) for k, v in c.items()}
    sums = {k: torch.zeros_like(v) for k, v in shift.items()}
    state[GRAD_SUM] = sums

    def correct(params: Mapping[str, torch.nn.Parameter]) -> None:
        with torch.no_grad():
            for key, p in params.items():
                if p.grad is not None:
                    sums[key].add_(p.grad.float())
                    p.grad.add_(shift[key].to(p.grad.dtype))

    return correct


def scaffold_variates(update: ClientUpdate, job: ClientJob, state: dict[str, Any]) -> ClientUpdate:
    """After training (the client half of fedit.methods.strategies.scaffold): c_i+ = mean step
    gradient into the client state, delta_c_i = c_i+ - c_i into ``update.arrays``."""
    sums = state.pop(GRAD_SUM, None)
    if not job.config.get(CONFIG_KEY) or sums is None:
        return update
    steps = int(update.metrics.get("steps", 0))
    old = state.get(CLIENT_C, {})
    if steps < 1:  # nothing was learnt: keep c_i
        new = {k: old[k].clone() if k in old else torch.zeros_like(v, device="cpu") for k, v in sums.items()}
    else:
        new = {k: (v / steps).cpu() for k, v in sums.items()}
    state[CLIENT_C] = new
    dc = {k: new[k] - old[k] if k in old else new[k].clone() for k in new}
    return dataclasses.replace(update, arrays={**update.arrays, DELTA_C: dc})
