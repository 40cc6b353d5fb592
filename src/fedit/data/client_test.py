"""``--client-test-fraction F``: part of every client's own records held out of its training, for the
per-client view (is the federated or personalized model better than local training, on this client's
kind of instructions?). Central evaluation on the pooled test set is unchanged.

The split of client k depends only on (data seed, k) and its records: within each category the
client holds out its share of round(F * n_k) records (largest remainders; so every category of a
client with several keeps its proportion), drawn with its own RNG. A client needs at least one record
held out and one left to train on.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from fedit.data.records import Example
from fedit.errors import ConfigError


def held_out_indices(records: Sequence[Example], fraction: float, rng: np.random.Generator,
                     client_id: int) -> list[int]:
    """Sorted indices of the client's held-out records (stratified by category)."""
    n = len(records)
    k = int(round(fraction * n))
    if k < 1 or n - k < 1:
        raise ConfigError(f"--client-test-fraction {fraction}: client {client_id} has {n} record(s), too few to "
                          f"hold {fraction:g} of them out and keep some to train on (it needs at least "
                          f"{smallest_client(fraction)})")
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(records):
        by_cat[ex.category].append(i)
    cats = sorted(by_cat)
    quota = np.array([fraction * len(by_cat[c]) for c in cats])
    take = np.floor(quota).astype(int)
    order = sorted(range(len(cats)), key=lambda j: (-(quota[j] - take[j]), cats[j]))
    for j in order[:k - int(take.sum())]:
        take[j] += 1
    out: list[int] = []
    for c, t in zip(cats, take):
        idx = by_cat[c]
        out.extend(idx[i] for i in rng.permutation(len(idx))[:t])
    return sorted(out)


def smallest_client(fraction: float) -> int:
    """The fewest records a client needs to hold at least one out and keep one to train on (searched
    from about 0.5 / min(F, 1 - F), where rounding first gives one record to each side)."""
    start = max(2, int(0.5 / min(fraction, 1.0 - fraction)) - 2)
    return next(n for n in range(start, start + 100) if 1 <= round(fraction * n) <= n - 1)


def split_clients(clients: Sequence[list[Example]], fraction: float | None, seed: int
                  ) -> tuple[list[list[Example]], list[list[Example]], list[list[int]]]:
    """(training records, held-out records, held-out indices) of every client; without a fraction
    every record trains and nothing is held out."""
    if fraction is None:
        return [list(c) for c in clients], [[] for _ in clients], [[] for _ in clients]
    train, test, indices = [], [], []
    for cid, records in enumerate(clients):
        kept, held, idx = split_one(records, fraction, seed, cid)
        train.append(kept)
        test.append(held)
        indices.append(idx)
    return train, test, indices


def split_one(records: Sequence[Example], fraction: float, seed: int, client_id: int
              ) -> tuple[list[Example], list[Example], list[int]]:
    """Client ``client_id``'s (training records, held-out records, held-out indices): the same on a
    Flower node holding that client's records as in the simulation."""
    held = held_out_indices(records, fraction, np.random.default_rng([seed, 3, client_id]), client_id)
    out = set(held)
    return [r for i, r in enumerate(records) if i not in out], [records[i] for i in held], held


def split_record(fraction: float, seed: int, tests: Sequence[Sequence[Example]],
                 indices: Sequence[Sequence[int]]) -> dict:
    """What ``client_test.json`` of a run records: the fraction, the seed and every client's held-out
    records (their indices among the client's records before the split)."""
    return {"fraction": fraction, "seed": seed, "rule": "stratified by category, round(F * n_k) per client",
            "clients": [{"client": cid, "records": len(t), "indices": list(map(int, idx))}
                        for cid, (t, idx) in enumerate(zip(tests, indices))]}
