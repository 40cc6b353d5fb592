"""The comparisons behind the report's claims, with their noise (fedit.experiment.stats).

One convention everywhere: a row's system against its reference (FedIT, or the judge's reference
answers): differences are ``system - reference``, ratios ``system / reference``. The verdict is
said from FedIT's side: ``FedIT better``, ``baseline better``, ``tie`` (identical on every record)
or ``within noise`` (the interval includes no change). A claim is made only when every interval
it rests on excludes no change.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedit.experiment.stats import Arrays, Interval, mean_sd, paired_bootstrap, verdict

FEDIT = "fedit"
# metric -> (higher is better, words)
METRICS = {"loss": (False, "held-out loss"), "rouge_l": (True, "ROUGE-L")}
TEXT_METRICS = ("rouge_l", "exact_match", "contains_match")


def metric_arrays(result: dict[str, Any], metric: str) -> Arrays | None:
    """Per-record (numerator, denominator) of ``metric`` in one system's result, or None."""
    if metric == "loss":
        rec = result.get("records") or {}
        if not rec.get("tokens"):
            return None
        return np.asarray(rec["loss_sum"], float), np.asarray(rec["tokens"], float)
    values = [a[metric] for a in result.get("answers", []) if metric in a]
    if not values:
        return None
    return np.asarray(values, float), np.ones(len(values))


def _seed_lists(runs: dict[str, dict[str, Any]], a: str, b: str) -> tuple[list[dict], list[dict]]:
    """The two systems' results paired by seed (a single run is paired with every seed of the other)."""
    ra, rb = runs.get(a, {}), runs.get(b, {})
    if len(ra) == 1 or len(rb) == 1:
        return list(ra.values()), list(rb.values())
    common = [s for s in ra if s in rb]
    return [ra[s] for s in common], [rb[s] for s in common]


def seed_pairs(xs: list[dict], refs: list[dict]) -> list[tuple[dict, dict]]:
    """The (system, reference) result pairs the bootstrap compares: by seed, a single run with every seed."""
    n = max(len(xs), len(refs))
    return [(xs[min(i, len(xs) - 1)], refs[min(i, len(refs) - 1)]) for i in range(n)]


def _why_not(xs: list[dict], refs: list[dict], metric: str) -> str | None:
    """Why two systems cannot be compared on ``metric`` (None when they can)."""
    if not xs or not refs:
        return "no common seed"
    if metric not in TEXT_METRICS:
        return None
    for x, r in seed_pairs(xs, refs):
        if x.get("eval_settings") != r.get("eval_settings"):
            return "generated with other settings (--gen-records, --max-new-tokens, --em-categories)"
        if [a["test_index"] for a in x.get("answers", [])] != [a["test_index"] for a in r.get("answers", [])]:
            return "answers to other test records"
    return None


def interval(runs: dict[str, dict[str, Any]], system: str, reference: str, metric: str, *, ratio: bool = False,
             resamples: int, confidence: float, seed: int) -> Interval | str:
    """The paired bootstrap interval of ``system`` against ``reference`` on ``metric`` (``-``, or
    ``/`` with ``ratio``), or the reason they cannot be compared."""
    xs, refs = _seed_lists(runs, system, reference)
    reason = _why_not(xs, refs, metric)
    if reason is not None:
        return reason
    ax, ar = [metric_arrays(r, metric) for r in xs], [metric_arrays(r, metric) for r in refs]
    if any(a is None for a in ax + ar):
        return "no per-record figures (a result.json from an older fedit: rerun it with --systems NAME)"
    try:
        return paired_bootstrap(ax, ar, ratio=ratio, resamples=resamples, confidence=confidence, seed=seed)
    except ValueError as exc:
        return str(exc)


def compare(runs: dict[str, dict[str, Any]], system: str, reference: str, metric: str, *,
            resamples: int, confidence: float, seed: int) -> dict[str, Any]:
    """``system`` against ``reference`` on ``metric``: the interval of ``system - reference`` and
    FedIT's verdict, or ``{"skipped": reason}``."""
    iv = interval(runs, system, reference, metric, resamples=resamples, confidence=confidence, seed=seed)
    if isinstance(iv, str):
        return {"skipped": iv}
    return {**iv.record(), "verdict": fedit_verdict(iv, metric, system, reference)}


def fedit_verdict(interval: Interval, metric: str, system: str, reference: str, ratio: bool = False) -> str:
    higher = METRICS.get(metric, (True, ""))[0]
    v = verdict(interval, higher_is_better=higher, ratio=ratio)
    if v in ("tie", "within noise"):
        return v
    winner = system if v == "better" else reference
    return "FedIT better" if winner == FEDIT else f"{winner} better"


def comparisons(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every other system against FedIT, per metric."""
    runs = results.get("runs") or {n: {"0": r} for n, r in results["systems"].items()}
    kw = bootstrap_settings(results)
    if FEDIT not in runs:
        return {}
    return {n: {m: compare(runs, n, FEDIT, m, **kw) for m in METRICS} for n in runs if n != FEDIT}


def claims(results: dict[str, Any], comps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper's claims, checked against the noise: does FedIT beat every local-only system
    (``yes`` / ``no`` / ``undecided``), and which share of centralized's improvement over base it
    recovers (only when centralized's improvement itself is outside the noise)."""
    out: dict[str, Any] = {}
    locals_ = [n for n in comps if n.startswith("local-")]
    for metric in METRICS:
        verdicts = [comps[n][metric].get("verdict") for n in locals_]
        if locals_:
            out[f"fedit_beats_all_local_{metric}"] = (
                "yes" if all(v == "FedIT better" for v in verdicts)
                else "no" if any(v and v.endswith(" better") and v != "FedIT better" for v in verdicts)
                else "undecided")
        out[f"recovered_{metric}"] = _recovered(results, comps, metric)
    return out


def bootstrap_settings(results: dict[str, Any]) -> dict[str, Any]:
    boot = results["settings"].get("bootstrap", {})
    return {"resamples": boot.get("resamples", 2000), "confidence": boot.get("confidence", 0.95),
            "seed": results["settings"]["config"]["federation"]["seed"]}


def _recovered(results: dict[str, Any], comps: dict[str, dict[str, Any]], metric: str) -> float | None:
    base, cent = comps.get("base", {}).get(metric, {}), comps.get("centralized", {}).get(metric, {})
    if "estimate" not in base or "estimate" not in cent:
        return None
    iv = interval(results.get("runs", {}), "centralized", "base", metric, **bootstrap_settings(results))
    if isinstance(iv, str) or verdict(iv, higher_is_better=METRICS[metric][0]) != "better":
        return None      # centralized did not improve on base beyond the noise: nothing to recover
    # the stored estimates are base - fedit and centralized - fedit, so
    # (fedit - base) / (centralized - base) = (base - fedit) / ((base - fedit) - (centralized - fedit))
    gain = base["estimate"] - cent["estimate"]
    return base["estimate"] / gain if gain else None


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sd and number of seeds of every metric of every system (overall and per category)."""
    out = {}
    for name, by_seed in runs.items():
        results = list(by_seed.values())
        keys = {k for r in results for k, v in r["overall"].items() if isinstance(v, (int, float))}
        cats = sorted({c for r in results for c in r["per_category"]})
        out[name] = {"overall": {k: _msd([r["overall"].get(k) for r in results]) for k in keys},
                     "per_category": {c: {k: _msd([r["per_category"].get(c, {}).get(k) for r in results])
                                          for k in {k for r in results for k in r["per_category"].get(c, {})}}
                                      for c in cats}}
    return out


def _msd(values: list[Any]) -> dict[str, Any]:
    vals = [v for v in values if isinstance(v, (int, float))]
    mean, sd = mean_sd(vals)
    return {"mean": mean, "sd": sd, "n": len(vals)}
