"""FedAdam (Reddi et al., 2021): Adam's second moment on the server's pseudo-gradient.

    v_t = beta2 * v_{t-1} + (1 - beta2) * delta_t^2

The rest (momentum, step, v_{-1} = tau^2, no bias correction) is shared: see fedit.server.fedopt.
"""

from __future__ import annotations

import torch

from fedit.server.fedopt import FedOpt


class FedAdam(FedOpt):
    name = "fedadam"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return self.beta2 * v + (1 - self.beta2) * d * d
