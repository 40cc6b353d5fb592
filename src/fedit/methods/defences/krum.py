"""krum (Blanchard et al., 2017): only the update with the lowest Krum score reaches the strategy (whole
replies: anything sent beside the adapter goes with it). Maths: fedit.server.robust.krum_select."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedit.errors import ConfigError
from fedit.method_api import Capabilities, Method, flag, option, require

logger = logging.getLogger(__name__)

SELECTION = Capabilities(needs_each_update=True, coordinatewise=True, uneven_ranks_ok=False)


@dataclass
class Options:
    krum_f: int = option(1, "krum, multi-krum: malicious updates tolerated per round (needs 2f+3 updates)")

    def __post_init__(self) -> None:
        require(self.krum_f >= 0, "krum_f", f"must be >= 0, got {self.krum_f}")


class Select:
    """Keep the ``keep(m, f)`` updates of lowest Krum score; list the others as robust_rejected."""

    def __init__(self, keep: Any) -> None:
        self.keep = keep

    def select(self, round_idx: int, updates: list, deltas: Any, reference: Any, wrapper: Any) -> tuple[list, dict]:
        from fedit.server.robust import krum_select

        f = wrapper.options.krum_f
        if len(updates) < 2 * f + 3:
            logger.warning("round %d: %d update(s), fewer than 2f+3 = %d: Krum's guarantee does not hold",
                           round_idx, len(updates), 2 * f + 3)
        chosen = krum_select(deltas, f, self.keep(len(updates), f))
        rejected = [u.client_id for i, u in enumerate(updates) if i not in chosen]
        return [updates[i] for i in chosen], {"robust_rejected": rejected}


def check(cfg: Any, per_round: int) -> None:
    rob = cfg.robustness
    if per_round < 2 * rob.krum_f + 3:
        raise ConfigError(f"{flag('krum_f')} {rob.krum_f}: --robust {rob.robust} needs at least 2f+3 = "
                          f"{2 * rob.krum_f + 3} clients per round, the run samples {per_round}")


METHOD = Method("krum", "defence", "keep the one update closest to its m-f-2 neighbours (Blanchard et al., 2017)",
                order=16, options=(Options,), capabilities=SELECTION, section="robustness",
                server=Select(lambda m, f: 1), check=check)
