"""norm-bound (Sun et al., 2019): every update's delta clipped to --max-update-norm (default: the median
delta norm of the round) before the strategy averages them. It bounds the adapter's delta only, so it
does not cover what a strategy sends beside it (SCAFFOLD's control variates): refused with such one."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedit.method_api import Capabilities, Method, option, require


@dataclass
class Options:
    max_update_norm: float | None = option(None, "norm-bound: L2 bound on each update's delta from the global "
                                           "adapter (default: the median delta norm of the round)")

    def __post_init__(self) -> None:
        require(self.max_update_norm is None or 0 < self.max_update_norm < float("inf"), "max_update_norm",
                f"must be a positive number, got {self.max_update_norm}")


class Clip:
    @staticmethod
    def select(round_idx: int, updates: list, deltas: Any, reference: Any, wrapper: Any) -> tuple[list, dict]:
        import torch

        from fedit.server.robust import clip_rows, coordinate_median, unflatten

        norms = deltas.to(torch.float64).norm(dim=1)
        bound = wrapper.options.max_update_norm
        if bound is None:
            bound = float(coordinate_median(norms[:, None]))
        clipped, factors = clip_rows(deltas, bound)
        passed = [dataclasses.replace(u, state=unflatten(clipped[i], reference)) for i, u in enumerate(updates)]
        return passed, {"norm_bound": bound,
                        "robust_clipped": [u.client_id for u, f in zip(updates, factors) if float(f) < 1]}


METHOD = Method("norm-bound", "defence", "clip each update's delta to an L2 bound (Sun et al., 2019)",
                order=18, options=(Options,), section="robustness", server=Clip(),
                capabilities=Capabilities(needs_each_update=True, coordinatewise=True, uneven_ranks_ok=False,
                                          covers_side_aggregates=False))
