"""Robust aggregation maths: pure functions over the clients' update deltas. No I/O, no model.

Every function works on a matrix ``D`` of shape (m, d): row i is client i's delta from the global
adapter, flattened over every tensor of the adapter in key order (the LoRA factors A and B as
they travel: see docs/robustness.md for why factors, not products B·A).

* :func:`coordinate_median`: per coordinate, the median of the m values (mean of the two middle
  ones for even m). Unweighted: claimed example counts play no part.
* :func:`trimmed_mean`: per coordinate, drop the ``k`` largest and ``k`` smallest values, average
  the rest (Yin et al., 2018). Unweighted.
* :func:`krum_scores` / :func:`krum_select`: Krum (Blanchard et al., 2017) scores each update by
  the sum of squared distances to its ``m - f - 2`` nearest others and keeps the lowest (Krum) or
  the ``m - f`` lowest (multi-krum, El Mhamdi et al., 2018).
* :func:`clip_rows`: scale each row down to L2 norm at most ``bound`` (norm bounding, Sun et al.,
  2019): no update moves the average by more than its weight times ``bound``.
"""

from __future__ import annotations

import torch

from fedit.model import AdapterState


def flatten_deltas(states: list[AdapterState], reference: AdapterState) -> torch.Tensor:
    """(m, d) float32: each state's delta from ``reference``, keys in ``reference`` order."""
    rows = [torch.cat([(s[k].to(torch.float32) - reference[k].to(torch.float32)).flatten() for k in reference])
            for s in states]
    return torch.stack(rows)


def unflatten(vec: torch.Tensor, reference: AdapterState) -> AdapterState:
    """``reference + vec`` as an adapter (inverse of one row of :func:`flatten_deltas`)."""
    out, start = {}, 0
    for key, ref in reference.items():
        n = ref.numel()
        out[key] = ref.to(torch.float32) + vec[start:start + n].view(ref.shape)
        start += n
    return out


def coordinate_median(deltas: torch.Tensor) -> torch.Tensor:
    m = deltas.shape[0]
    ordered = deltas.sort(dim=0).values
    if m % 2:
        return ordered[m // 2].clone()
    return (ordered[m // 2 - 1] + ordered[m // 2]) / 2


def trim_count(m: int, ratio: float) -> int:
    """Values dropped at each end: floor(ratio * m), leaving at least one."""
    return min(int(ratio * m + 1e-9), (m - 1) // 2)


def trimmed_mean(deltas: torch.Tensor, trim: int) -> torch.Tensor:
    m = deltas.shape[0]
    if not 0 <= 2 * trim < m:
        raise ValueError(f"cannot trim {trim} at each end of {m} values")
    ordered = deltas.sort(dim=0).values
    return ordered[trim:m - trim].mean(dim=0)


def krum_neighbours(m: int, f: int) -> int:
    """Neighbours in a Krum score: m - f - 2 (at least 1; Krum's guarantee needs m >= 2f + 3)."""
    return max(1, min(m - 1, m - f - 2))


def krum_scores(deltas: torch.Tensor, f: int) -> torch.Tensor:
    """Score of each row: the sum of its squared distances to its m - f - 2 nearest other rows."""
    m = deltas.shape[0]
    if m == 1:
        return torch.zeros(1, dtype=torch.float64)
    x = deltas.to(torch.float64)
    dist = torch.cdist(x, x).square()
    dist.fill_diagonal_(float("inf"))
    k = krum_neighbours(m, f)
    return dist.sort(dim=1).values[:, :k].sum(dim=1)


def krum_select(deltas: torch.Tensor, f: int, keep: int) -> list[int]:
    """Rows with the ``keep`` lowest Krum scores (ties: the lower index), in index order."""
    scores = krum_scores(deltas, f)
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:keep])


def clip_rows(deltas: torch.Tensor, bound: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows scaled to L2 norm <= bound, the factor each row was scaled by: 1 if untouched)."""
    norms = deltas.to(torch.float64).norm(dim=1)
    factors = torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))
    return deltas * factors.to(deltas.dtype)[:, None], factors
