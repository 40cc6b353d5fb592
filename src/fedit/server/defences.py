"""``--robust``: robust aggregation as a wrapper around any strategy (docs/robustness.md).

The wrapper decides what the inner strategy (FedAvg, FedAvgM, FedProx...) gets to aggregate:

* ``median`` / ``trimmed-mean``: every update's adapter is replaced by the coordinate-wise robust
  aggregate of the round, so the inner strategy's weighted mean is that aggregate (its server
  momentum, if any, still applies); per-client extra tensors pass through untouched.
* ``krum`` / ``multi-krum``: only the selected updates (1, or m - f) reach the inner strategy;
  the others are listed in the round record as ``robust_rejected``.
* ``norm-bound``: every update's delta is clipped to ``--max-update-norm`` (default: the median
  delta norm of the round) before the inner strategy averages them; clipped clients are listed
  as ``robust_clipped``, the bound used as ``norm_bound``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Sequence

import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config, flag
from fedit.errors import ConfigError
from fedit.model import AdapterState
from fedit.server.robust import (clip_rows, coordinate_median, flatten_deltas, krum_select, trim_count,
                                 trimmed_mean, unflatten)
from fedit.server.strategy import Strategy, StrategyWrapper

logger = logging.getLogger(__name__)


class RobustAggregation(StrategyWrapper):
    name = "robust"
    needs_each_update = "--robust"   # it reads every client's own update: no secure aggregation

    def __init__(self, inner: Strategy, *, robust: str, trim_ratio: float, krum_f: int,
                 max_update_norm: float | None) -> None:
        super().__init__(inner)
        self.robust, self.trim_ratio, self.krum_f = robust, trim_ratio, krum_f
        self.max_update_norm = max_update_norm

    def describe(self) -> str:
        return f"{self.robust}({self.inner.describe()})"

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        # the entries the clients sent (all of them, or B alone under --lora-aggregation ffa)
        reference = {k: global_state[k] for k in updates[0].state}
        deltas = flatten_deltas([u.state for u in updates], reference)
        extra: dict[str, Any] = {}
        if self.robust in ("median", "trimmed-mean"):
            if self.robust == "median":
                agg = coordinate_median(deltas)
            else:
                extra["robust_trimmed"] = trim = trim_count(len(updates), self.trim_ratio)
                agg = trimmed_mean(deltas, trim)
            robust_state = unflatten(agg, reference)
            passed = [dataclasses.replace(u, state=robust_state) for u in updates]
        elif self.robust in ("krum", "multi-krum"):
            if len(updates) < 2 * self.krum_f + 3:
                logger.warning("round %d: %d update(s), fewer than 2f+3 = %d: Krum's guarantee does not hold",
                               round_idx, len(updates), 2 * self.krum_f + 3)
            keep = 1 if self.robust == "krum" else max(1, len(updates) - self.krum_f)
            chosen = krum_select(deltas, self.krum_f, keep)
            passed = [updates[i] for i in chosen]
            extra["robust_rejected"] = [u.client_id for i, u in enumerate(updates) if i not in chosen]
        else:  # norm-bound
            norms = deltas.to(torch.float64).norm(dim=1)
            bound = self.max_update_norm if self.max_update_norm is not None else \
                float(coordinate_median(norms[:, None]))
            clipped, factors = clip_rows(deltas, bound)
            passed = [dataclasses.replace(u, state=unflatten(clipped[i], reference))
                      for i, u in enumerate(updates)]
            extra["norm_bound"] = bound
            extra["robust_clipped"] = [u.client_id for u, f in zip(updates, factors) if float(f) < 1]
        state, metrics = self.inner.aggregate_train(round_idx, global_state, passed)
        return state, {**metrics, **extra}


def check_round_size(cfg: Config, per_round: int) -> None:
    """Refuse, in one line, a --robust rule the round's size cannot support (Krum: 2f+3 updates).
    Runners call it as soon as they know the round's size (a deployment: before any process starts)."""
    rob = cfg.robustness
    if rob.robust in ("krum", "multi-krum") and per_round < 2 * rob.krum_f + 3:
        raise ConfigError(f"{flag('krum_f')} {rob.krum_f}: --robust {rob.robust} needs at least 2f+3 = "
                          f"{2 * rob.krum_f + 3} clients per round, the run samples {per_round}")


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """registry.WRAPPERS entry: RobustAggregation around ``strategy`` when ``--robust`` is set."""
    rob = cfg.robustness
    if rob.robust == "none":
        return strategy
    per_round = strategy.clients_per_round
    check_round_size(cfg, per_round)
    if rob.robust == "trimmed-mean" and trim_count(per_round, rob.trim_ratio) == 0:
        logger.warning("--trim-ratio %g trims nothing with %d clients per round: the trimmed mean is the mean",
                       rob.trim_ratio, per_round)
    return RobustAggregation(strategy, robust=rob.robust, trim_ratio=rob.trim_ratio, krum_f=rob.krum_f,
                             max_update_norm=rob.max_update_norm)
