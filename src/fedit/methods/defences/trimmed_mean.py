"""trimmed-mean (Yin et al., 2018): per coordinate, drop the --trim-ratio share of the largest and of the
smallest values, average the rest. Maths: fedit.server.robust.trimmed_mean."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedit.method_api import Method, option, require
from fedit.methods.defences.median import DEFENCE

logger = logging.getLogger(__name__)


@dataclass
class Options:
    trim_ratio: float = option(0.2, "trimmed-mean: share of the updates dropped at each end, per coordinate")

    def __post_init__(self) -> None:
        require(0 <= self.trim_ratio < 0.5, "trim_ratio", f"must be in [0, 0.5), got {self.trim_ratio}")


class Rule:
    @staticmethod
    def combine(deltas: Any, wrapper: Any) -> tuple[Any, dict[str, Any]]:
        from fedit.server.robust import trim_count, trimmed_mean

        trim = trim_count(deltas.shape[0], wrapper.options.trim_ratio)
        return trimmed_mean(deltas, trim), {"robust_trimmed": trim}


def check(cfg: Any, per_round: int) -> None:
    from fedit.server.robust import trim_count

    ratio = cfg.robustness.trim_ratio
    if trim_count(per_round, ratio) == 0:
        logger.warning("--trim-ratio %g trims nothing with %d clients per round: the trimmed mean is the mean",
                       ratio, per_round)


METHOD = Method("trimmed-mean", "defence", "coordinate-wise trimmed mean (Yin et al., 2018)",
                order=15, options=(Options,),
                capabilities=DEFENCE, section="robustness", server=Rule(), check=check)
