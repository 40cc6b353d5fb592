"""Membership inference by an honest-but-curious server on one client's update.

One client of the run (drawn by the audit's seed among those with 4 records or more) is trained
again as in its first round: from the run's initial adapter, which has seen none of its records,
with the run's local settings, on n = min(``records``, half its records) of its records drawn at
random (the members), while another n of its records are held out for the purpose (the
non-members): the same client, the same distribution, so a score that separates them measures
memorization, not a shift between datasets. Training on n records only (every member is seen when
local steps x batch >= n) makes this a worst case for the client, as an audit should be. The server's view of the update comes
from :mod:`fedit.audit.views`. A record's score is how much the update lowers its loss:
loss(start) - loss(start + view), per response token. Reported per view: the ROC AUC and the
true-positive rate at 1 % false positives (with fewer than 100 non-members: at 0 of them).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from fedit.audit.stats import roc_auc, tpr_at_fpr
from fedit.audit.views import views
from fedit.data import Example
from fedit.errors import ConfigError

LossFn = Callable[[dict, Sequence[Example]], list[float]]


def choose_target(clients: Sequence[Sequence[Example]], rng: np.random.Generator) -> int:
    eligible = [cid for cid, c in enumerate(clients) if len(c) >= 4]
    if not eligible:
        raise ConfigError("fedit audit: no client has 4 records or more to attack")
    return int(rng.choice(eligible))


def update_attack(trainer: Any, cfg: Any, clients: Sequence[list[Example]], state: dict, round_idx: int,
                  losses: LossFn, tokenize: Callable[[Sequence[Example]], Any], *, records: int,
                  seed: int) -> dict[str, Any]:
    rng = np.random.default_rng([seed, 0xA0D17])
    target = choose_target(clients, rng)
    own = [clients[target][i] for i in rng.permutation(len(clients[target])).tolist()]
    n = min(records, len(own) // 2)
    trained, held = own[:n], own[n:2 * n]   # it trains on its members only: every one is seen when steps allow
    members, others = trained, held
    data = {target: tokenize(trained)}

    def data_of(cid: int):
        if cid not in data:
            data[cid] = tokenize(clients[cid])
        return data[cid]

    before = losses(state, members + others)
    result: dict[str, Any] = {"target_client": target, "round": round_idx, "trained_records": len(trained),
                              "members": len(members), "non_members": len(others), "views": {}}
    for view in views(trainer, cfg, len(clients), state, round_idx, target, data_of):
        after = losses(view.state, members + others)
        scores = [b - a for b, a in zip(before, after)]
        result["views"][view.name] = {"auc": roc_auc(scores[:len(members)], scores[len(members):]),
                                      "tpr_at_1pct_fpr": tpr_at_fpr(scores[:len(members)], scores[len(members):], 0.01),
                                      "cohort": view.cohort}
    result["seen"] = list(result["views"])[-1]
    return result
