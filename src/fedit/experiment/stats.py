"""Noise-aware comparisons: mean ± sd over seeds and paired bootstrap intervals over test records.

Every metric of the report is a ratio of sums over records, ``sum(num) / sum(den)``: held-out
loss is (summed response-token loss, response tokens) per record, ROUGE-L or a judge score is
(value, 1). A comparison of system ``x`` with a reference ``r`` is ``stat(x) - stat(r)`` (or
``stat(x) / stat(r)`` for relative scores): the row's system against its reference, one
convention everywhere.

The interval is a paired bootstrap: each resample draws the test records with replacement and
scores both systems on the same draw, so record-to-record difficulty cancels. With several seeds
it is hierarchical: the seeds are drawn with replacement too (records are resampled within each
drawn seed and the per-seed comparisons averaged), so training noise widens the interval as
much as test-set noise. A claim is made only when the interval excludes zero (or one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]   # (numerators, denominators) of one system on one seed's records


@dataclass(frozen=True)
class Interval:
    estimate: float        # the comparison on the full data, averaged over seeds
    low: float
    high: float
    confidence: float
    seeds: int
    records: int
    identical: bool = False  # the two systems score the same on every record of every seed


    def excludes(self, value: float) -> bool:
        return self.low > value or self.high < value

    def record(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence,
                "seeds": self.seeds, "records": self.records, "identical": self.identical}


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    arr = np.asarray([v for v in values if v is not None], dtype=float)
    if arr.size == 0:
        return float("nan"), None
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _stat(weights: np.ndarray, arrays: Arrays) -> np.ndarray:
    num, den = arrays
    return (weights @ num) / (weights @ den)


def _compare(x: Arrays, r: Arrays, ratio: bool, resamples: int, rng: np.random.Generator,
             full: list[float]) -> np.ndarray:
    """The comparison on ``resamples`` paired resamples of one seed's records (and, appended to
    ``full``, on the records themselves)."""
    n = len(x[0])
    if len(r[0]) != n:
        raise ValueError(f"paired bootstrap needs the same records: {n} vs {len(r[0])}")
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    sx, sr = _stat(weights, x), _stat(weights, r)
    ones = np.ones((1, n))
    fx, fr = _stat(ones, x)[0], _stat(ones, r)[0]
    full.append(fx / fr if ratio else fx - fr)
    return sx / sr if ratio else sx - sr


def paired_bootstrap(system: Sequence[Arrays], reference: Sequence[Arrays], *, ratio: bool = False,
                     resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Interval of ``stat(system) - stat(reference)`` (``ratio``: ``/``) over resampled records (and
    seeds). ``system[i]`` and ``reference[i]`` must score the same records; a list of length 1 is
    paired with every seed of the other (e.g. the untuned base model, the same under every seed)."""
    n_seeds = max(len(system), len(reference))
    pairs = [(system[min(i, len(system) - 1)], reference[min(i, len(reference) - 1)]) for i in range(n_seeds)]
    rng = np.random.default_rng([seed, 7])
    per_seed, full = [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for x, r in pairs:
            per_seed.append(_compare(x, r, ratio, resamples, rng, full))
    identical = all(np.array_equal(x[0], r[0]) and np.array_equal(x[1], r[1]) for x, r in pairs)
    per_seed_arr = np.stack(per_seed)                                     # (seeds, resamples)
    if n_seeds > 1:
        draw = rng.integers(0, n_seeds, size=(resamples, n_seeds))
        replicates = per_seed_arr[draw, np.arange(resamples)[:, None]].mean(axis=1)
    else:
        replicates = per_seed_arr[0]
    replicates = replicates[np.isfinite(replicates)]
    tail = (1 - confidence) / 2
    low, high = (np.quantile(replicates, [tail, 1 - tail]) if replicates.size else (np.nan, np.nan))
    estimate = float(np.mean(full)) if np.all(np.isfinite(full)) else float("nan")
    return Interval(estimate, float(low), float(high), confidence, n_seeds, len(pairs[0][0][0]),
                    identical)


def verdict(interval: Interval, *, higher_is_better: bool, ratio: bool = False) -> str:
    """``better`` / ``worse`` (the system against its reference, the interval excluding no change),
    ``tie`` (identical on every record) or ``within noise``."""
    none = 1.0 if ratio else 0.0
    if interval.identical:
        return "tie"
    if not (np.isfinite(interval.low) and np.isfinite(interval.high)) or not interval.excludes(none):
        return "within noise"
    above = interval.low > none
    return "better" if above == higher_is_better else "worse"
