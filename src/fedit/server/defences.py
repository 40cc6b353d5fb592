"""``--robust``: robust aggregation as a wrapper around any strategy (docs/robustness.md).

The defence itself is a method (fedit.methods.defences: median, trimmed-mean, krum, multi-krum,
norm-bound, or a plugin's); this wrapper decides, with it, what the inner strategy gets to aggregate:

* a coordinate rule (``combine``: median, trimmed-mean): every update's adapter is replaced by the
  robust aggregate of the round, so the inner strategy's weighted mean is that aggregate (its server
  momentum, if any, still applies). The same rule is applied to every side aggregate the strategy
  declares (SCAFFOLD's control-variate deltas), so no single client moves those either;
* a selection (``select``: krum, multi-krum keep whole replies, the rest listed as
  ``robust_rejected``; norm-bound clips each delta, listed as ``robust_clipped``).
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Sequence

import torch

from fedit.client.job import ClientUpdate
from fedit.config import Config
from fedit.model import AdapterState
from fedit.registry import method, methods
from fedit.server.robust import flatten_deltas, unflatten
from fedit.server.strategy import Strategy, StrategyWrapper


class RobustAggregation(StrategyWrapper):
    name = "robust"
    needs_each_update = "--robust"   # it reads every client's own update: no secure aggregation

    def __init__(self, inner: Strategy, *, robust: str, side_aggregates: Sequence[str] = (), **options: Any) -> None:
        super().__init__(inner)
        self.robust, self.options = robust, SimpleNamespace(**options)
        self.rule = method("defence", robust).half("server")
        self.side_aggregates = tuple(side_aggregates)

    def describe(self) -> str:
        return f"{self.robust}({self.inner.describe()})"

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        # the entries the clients sent (all of them, or B alone under --lora-aggregation ffa)
        reference = {k: global_state[k] for k in updates[0].state}
        deltas = flatten_deltas([u.state for u in updates], reference)
        if hasattr(self.rule, "combine"):
            agg, extra = self.rule.combine(deltas, self)
            robust_state = unflatten(agg, reference)
            side = {key: self._combine_side(key, updates) for key in self.side_aggregates}
            passed = [dataclasses.replace(u, state=robust_state, arrays={**u.arrays, **side}) if side else
                      dataclasses.replace(u, state=robust_state) for u in updates]
        else:
            passed, extra = self.rule.select(round_idx, list(updates), deltas, reference, self)
        state, metrics = self.inner.aggregate_train(round_idx, global_state, passed)
        return state, {**metrics, **extra}

    def _combine_side(self, key: str, updates: Sequence[ClientUpdate]) -> AdapterState:
        """The coordinate rule applied to the clients' ``key`` arrays (e.g. SCAFFOLD's delta_c)."""
        first = updates[0].arrays[key]
        zeros = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in first.items()}
        agg, _ = self.rule.combine(flatten_deltas([u.arrays[key] for u in updates], zeros), self)
        return unflatten(agg, zeros)


def check_round_size(cfg: Config, per_round: int) -> None:
    """Refuse, in one line, a --robust rule the round's size cannot support (the defence's own check,
    e.g. Krum: 2f+3 updates). Runners call it as soon as they know the round's size (a deployment:
    before any process starts)."""
    rob = cfg.robustness
    if rob.robust == "none":
        return
    defence = method("defence", rob.robust)
    if defence.check is not None:
        defence.check(cfg, per_round)


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """RobustAggregation around ``strategy`` when ``--robust`` is set (after the defence's own checks)."""
    rob = cfg.robustness
    if rob.robust == "none":
        return strategy
    check_round_size(cfg, strategy.clients_per_round)
    sides = method("strategy", cfg.federation.strategy).capabilities.side_aggregates
    options = {f.name: getattr(getattr(cfg, m.option_section), f.name)
               for m in methods("defence") for f in m.option_fields()}
    return RobustAggregation(strategy, robust=rob.robust, side_aggregates=sides, **options)
