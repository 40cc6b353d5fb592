"""median: the coordinate-wise median of the round's update deltas replaces every update (unweighted;
claimed example counts play no part). Maths: fedit.server.robust.coordinate_median."""

from __future__ import annotations

from typing import Any

from fedit.method_api import Capabilities, Method

DEFENCE = Capabilities(needs_each_update=True, coordinatewise=True, uneven_ranks_ok=False)


class Rule:
    """A coordinate rule: one robust row from the (m, d) deltas; also applied to side aggregates."""

    @staticmethod
    def combine(deltas: Any, wrapper: Any) -> tuple[Any, dict[str, Any]]:
        from fedit.server.robust import coordinate_median

        return coordinate_median(deltas), {}


METHOD = Method("median", "defence", "coordinate-wise median of the updates (unweighted)",
                order=14, capabilities=DEFENCE, section="robustness", server=Rule())
