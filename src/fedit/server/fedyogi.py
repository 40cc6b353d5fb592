"""FedYogi (Reddi et al., 2021): Yogi's second moment on the server's pseudo-gradient.

    v_t = v_{t-1} - (1 - beta2) * delta_t^2 * sign(v_{t-1} - delta_t^2)

Unlike Adam's, v moves towards delta^2 by an additive amount, so one large round cannot
inflate it (and shrink later steps) as fast. The rest (momentum, step, v_{-1} = tau^2, no bias
correction) is shared: see fedit.server.fedopt.
"""

from __future__ import annotations

import torch

from fedit.server.fedopt import FedOpt


class FedYogi(FedOpt):
    name = "fedyogi"

    def second_moment(self, v: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        d2 = d * d
        return v - (1 - self.beta2) * d2 * torch.sign(v - d2)
