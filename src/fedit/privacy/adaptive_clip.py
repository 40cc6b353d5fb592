"""Adaptive clipping for DP-FedAvg (Andrew et al., "Differentially Private Learning with Adaptive
Clipping", NeurIPS 2021), ``--dp-clip auto``; Flower's ``DifferentialPrivacyServerSideAdaptiveClipping``
is the reference.

Each round the server (central mode: it sees every update) counts the sampled clients whose update
norm is at most the current clip C, noises that count with N(0, sigma_b^2), divides by the expected
number of clients m, and moves C geometrically towards the target quantile gamma of the norms:

    b = (#{i: ||delta_i|| <= C} + N(0, sigma_b^2)) / m,     C <- C * exp(-eta * (b - gamma))

sigma_b defaults to m / 20 (the paper's recommendation, as in Flower). The noised count is a second
release of the round; :mod:`fedit.privacy.accounting` accounts both together.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


class AdaptiveClip:
    def __init__(self, initial: float, quantile: float, lr: float, count_noise: float) -> None:
        self.clip, self.quantile, self.lr, self.count_noise = float(initial), quantile, lr, count_noise

    def step(self, norms: Sequence[float], denominator: float, generator: torch.Generator) -> dict[str, Any]:
        """Update the clip from this round's update norms (taken before clipping); what it logs."""
        used = self.clip
        within = sum(1 for n in norms if n <= used)
        noise = float(torch.randn((), generator=generator, dtype=torch.float64)) * self.count_noise
        fraction = (within + noise) / denominator
        self.clip = used * math.exp(-self.lr * (fraction - self.quantile))
        return {"dp_clip": used, "dp_clip_next": self.clip, "dp_unclipped_fraction_noised": fraction}

    def state_dict(self) -> dict[str, float]:
        return {"clip": self.clip}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.clip = float(state["clip"])
