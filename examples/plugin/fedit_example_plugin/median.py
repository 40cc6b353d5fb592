"""example-median: the new global adapter is the coordinate-wise median of the round's updates.

A strategy in one file: its options (one, to show that a plugin's flags get their own --help group and
its own YAML section, ``example_median``), its capabilities (it needs each client's own update, and
compares them coordinate by coordinate, so fedit refuses it with --secure-aggregation, --dp-clip or
clients of different ranks, in one line naming both flags) and its server half.

The declaration imports nothing heavy: fedit reads every method's options to build ``--help``. The
server half (a fedit Strategy) is built on first use, by ``_strategy`` below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedit.methods import Capabilities, Lazy, Method, option

logger = logging.getLogger(__name__)


@dataclass
class Options:
    median_warn_below: int = option(3, "example-median: warn when a round has fewer updates than this (the "
                                    "median of two updates is their mean)")


def _strategy() -> type:
    from fedit.server.robust import coordinate_median, flatten_deltas, unflatten
    from fedit.server.strategy import Strategy, train_metrics

    class ExampleMedian(Strategy):
        name = "example-median"
        needs_each_update = "--strategy example-median"

        def __init__(self, *, median_warn_below: int, **base: Any) -> None:
            super().__init__(**base)
            self.warn_below = median_warn_below

        def aggregate_train(self, round_idx, global_state, updates):
            if len(updates) < self.warn_below:
                logger.warning("round %d: the median of %d update(s)", round_idx, len(updates))
            sent = {k: global_state[k] for k in updates[0].state}    # all of it, or B alone under ffa
            median = unflatten(coordinate_median(flatten_deltas([u.state for u in updates], sent)), sent)
            state = {**{k: v.float() for k, v in global_state.items()}, **median}
            return state, train_metrics(updates, [u.num_examples for u in updates])

    return ExampleMedian


METHOD = Method("example-median", "strategy", "coordinate-wise median of the round's updates (example plugin)",
                options=(Options,),
                capabilities=Capabilities(needs_each_update=True, coordinatewise=True, uneven_ranks_ok=False),
                server=Lazy(_strategy))
