"""FedAdagrad (Reddi et al., 2021): Adagrad's second moment on the server's pseudo-gradient.

    v_t = v_{t-1} + delta_t^2          (--server-beta2 is not used)

The rest (momentum with --server-beta1, step, v_{-1} = tau^2) is shared: see fedit.server.fedopt.
The paper's Algorithm 2 writes the momentum m_t for all three methods, so fedit keeps it;
Flower's FedAdagrad (and OpenFedLLM's) uses none, which is ``--server-beta1 0`` here.
"""

from __future__ import annotations

import torch

from fedit.server.fedopt import FedOpt


class FedAdagrad(FedOpt):
    name = "fedadagrad"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return v + d * d
