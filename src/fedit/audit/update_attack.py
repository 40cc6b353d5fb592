"""Membership inference by an honest-but-curious server on one client's update.

One client of the run (drawn by the audit's seed among those with records to spare) is trained
again as in its first round: from the run's initial adapter, which has seen none of its records
(from the final adapter, which has, its members' losses are already low and the attack measures
little; see docs/privacy.md), with the run's local settings. The server's view of its update comes from
:mod:`fedit.audit.views`. Candidate records: up to ``records`` of that client's own training records
(members) and as many held-out records (``--test-data``, never trained on by anyone; the members'
categories first), the non-members. A record's score is how much the update lowers its loss:
loss(global) - loss(global + view), per response token. Reported per view: the ROC AUC and the
true-positive rate at 1 % false positives (with fewer than 100 non-members that means at 0 of them).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Sequence

import numpy as np

from fedit.audit.stats import roc_auc, tpr_at_fpr
from fedit.audit.views import views
from fedit.data import Example
from fedit.errors import ConfigError

LossFn = Callable[[dict, Sequence[Example]], list[float]]


def choose_target(clients: Sequence[Sequence[Example]], rng: np.random.Generator) -> int:
    eligible = [cid for cid, c in enumerate(clients) if len(c) >= 2]
    if not eligible:
        raise ConfigError("fedit audit: no client has 2 records or more to attack")
    return int(rng.choice(eligible))


def non_members(members: Sequence[Example], held_out: Sequence[Example], rng: np.random.Generator) -> list[Example]:
    """As many held-out records as members, of the members' categories first (seeded)."""
    by_cat: dict[str, list[Example]] = defaultdict(list)
    for i in rng.permutation(len(held_out)).tolist():
        by_cat[held_out[i].category].append(held_out[i])
    picked: list[Example] = []
    for ex in members:
        if by_cat.get(ex.category):
            picked.append(by_cat[ex.category].pop())
    rest = [ex for pool in by_cat.values() for ex in pool]
    rng.shuffle(rest)
    return picked + rest[:max(0, len(members) - len(picked))]


def update_attack(trainer: Any, cfg: Any, clients: Sequence[list[Example]], held_out: Sequence[Example],
                  state: dict, round_idx: int, losses: LossFn, tokenized: Callable[[int], Any], *,
                  records: int, seed: int) -> dict[str, Any]:
    if not held_out:
        raise ConfigError("fedit audit: the update attack needs non-member records: the run has no --test-data")
    rng = np.random.default_rng([seed, 0xA0D17])
    target = choose_target(clients, rng)
    own = list(clients[target])
    members = [own[i] for i in sorted(rng.choice(len(own), size=min(records, len(own)), replace=False).tolist())]
    others = non_members(members, held_out, rng)
    before = losses(state, members + others)
    result: dict[str, Any] = {"target_client": target, "round": round_idx, "members": len(members),
                              "non_members": len(others), "views": {}}
    for view in views(trainer, cfg, len(clients), state, round_idx, target, tokenized):
        after = losses(view.state, members + others)
        scores = [b - a for b, a in zip(before, after)]
        result["views"][view.name] = {"auc": roc_auc(scores[:len(members)], scores[len(members):]),
                                      "tpr_at_1pct_fpr": tpr_at_fpr(scores[:len(members)], scores[len(members):], 0.01),
                                      "cohort": view.cohort}
    result["seen"] = list(result["views"])[-1]
    return result
