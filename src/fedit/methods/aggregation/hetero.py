"""The option shared by the aggregations that take clients of lower rank (zero-pad, ffa, product-svd):
how a component (a row of A, a column of B) that some clients do not hold is averaged. See
docs/methods.md for the decay the paper's rule shows over rounds where nobody changes anything."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import option

HETERO_RULES = ("paper", "per-component")


@dataclass
class HeteroOptions:
    hetero_rule: str = option("paper", "clients of different ranks: paper (a component a client does not hold "
                              "counts as its zero, as HetLoRA/FlexLoRA; components shrink every round) or "
                              "per-component (each component's change averaged over the clients that hold it)",
                              HETERO_RULES)
