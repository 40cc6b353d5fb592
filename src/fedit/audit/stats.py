"""The statistics of the audit: ROC AUC, the true-positive rate at a false-positive rate,
Clopper-Pearson bounds and the empirical epsilon lower bound they give.

An (epsilon, delta)-DP mechanism bounds every membership test: TPR <= e^eps * FPR + delta and
TNR <= e^eps * FNR + delta (Kairouz et al. 2015). With TP of P members and FP of N non-members
flagged at a threshold, one-sided Clopper-Pearson bounds (TPR >= lo, FPR <= hi) turn that into
eps >= ln((TPR_lo - delta) / FPR_hi), and likewise for the negatives; the bound holds with the stated
confidence jointly over every threshold tried (Bonferroni: each bound at alpha / (4 * thresholds)).
This is the classic audit of Jagielski et al. 2020 applied to canaries of one run; the canaries
are not independent trials of one mechanism, so it is an estimate, not a certificate
(Steinke et al. 2023 give the rigorous one-run analysis).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import beta


def roc_auc(members: Sequence[float], others: Sequence[float]) -> float:
    """P(score of a member > score of a non-member), ties counting one half (Mann-Whitney)."""
    a, b = np.asarray(members, float)[:, None], np.asarray(others, float)[None, :]
    return float(((a > b).sum() + 0.5 * (a == b).sum()) / (a.size * b.size))


def tpr_at_fpr(members: Sequence[float], others: Sequence[float], fpr: float = 0.01) -> float:
    """The largest share of members flagged by a threshold that flags at most ``fpr`` of the others
    (with fewer than 1 / fpr non-members that means flagging none of them)."""
    others_sorted = np.sort(np.asarray(others, float))[::-1]
    allowed = int(math.floor(fpr * len(others_sorted)))
    # flag scores strictly above the (allowed+1)-th largest non-member score
    cut = others_sorted[allowed] if allowed < len(others_sorted) else -np.inf
    return float(np.mean(np.asarray(members, float) > cut))


def clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided Clopper-Pearson bounds (lower, upper) on a binomial proportion, each at level alpha."""
    lower = 0.0 if k == 0 else float(beta.ppf(alpha, k, n - k + 1))
    upper = 1.0 if k == n else float(beta.ppf(1 - alpha, k + 1, n - k))
    return lower, upper


def _log_ratio(num: float, den: float) -> float:
    if num <= 0:
        return 0.0
    return math.inf if den <= 0 else max(0.0, math.log(num / den))


def epsilon_lower_bound(members: Sequence[float], others: Sequence[float], delta: float,
                        confidence: float = 0.95) -> dict[str, float]:
    """The empirical epsilon lower bound of the test "flag scores >= t", the best t (see the module
    docstring), with its TPR/FPR."""
    members, others = np.asarray(members, float), np.asarray(others, float)
    p, n = len(members), len(others)
    thresholds = np.unique(np.concatenate([members, others]))
    alpha = (1 - confidence) / (4 * len(thresholds))
    best = {"epsilon_lower_bound": 0.0, "threshold": None, "tpr": None, "fpr": None}
    for t in thresholds:
        tp, fp = int((members >= t).sum()), int((others >= t).sum())
        tpr_lo, fnr_hi = clopper_pearson(tp, p, alpha)[0], clopper_pearson(p - tp, p, alpha)[1]
        fpr_hi, tnr_lo = clopper_pearson(fp, n, alpha)[1], clopper_pearson(n - fp, n, alpha)[0]
        eps = max(_log_ratio(tpr_lo - delta, fpr_hi), _log_ratio(tnr_lo - delta, fnr_hi))
        if eps > best["epsilon_lower_bound"]:
            best = {"epsilon_lower_bound": eps, "threshold": float(t), "tpr": tp / p, "fpr": fp / n}
    return {**best, "confidence": confidence, "members": p, "non_members": n}


def exposure(secret_loss: float, reference_losses: Sequence[float]) -> float:
    """Carlini et al.'s exposure, estimated from references drawn from the secrets' space:
    log2(R + 1) - log2(rank), rank = 1 + references with a lower loss (max log2(R + 1))."""
    rank = 1 + int(np.sum(np.asarray(reference_losses, float) < secret_loss))
    return math.log2(len(reference_losses) + 1) - math.log2(rank)
