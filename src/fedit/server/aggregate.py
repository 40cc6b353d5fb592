"""Aggregation maths as pure functions over adapter states (dicts of tensors). No I/O, no model.

FedAvg of LoRA averages the A and B factors separately. The model then applies
mean(B) @ mean(A), which is not the mean of the clients' updates mean(B @ A);
:func:`lora_product_gap` measures how far apart they are, each round.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedit.model import AdapterState


def normalized_weights(weights: Sequence[float]) -> list[float]:
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights must sum to a positive number")
    return [float(w) / total for w in weights]


def weighted_mean(states: Sequence[AdapterState], weights: Sequence[float]) -> AdapterState:
    """Sum_k w_k * state_k with w normalized to 1 (FedAvg when w = number of examples)."""
    if not states:
        raise ValueError("nothing to aggregate")
    w = normalized_weights(weights)
    out: AdapterState = {}
    for key in states[0]:
        acc = torch.zeros_like(states[0][key], dtype=torch.float32)
        for wk, state in zip(w, states):
            acc.add_(state[key].float(), alpha=wk)
        out[key] = acc
    return out


def delta(new: AdapterState, old: AdapterState) -> AdapterState:
    return {k: new[k].float() - old[k].float() for k in old}


def apply_delta(base: AdapterState, step: AdapterState, scale: float = 1.0) -> AdapterState:
    return {k: base[k].float() + scale * step[k] for k in base}


def lora_pairs(state: AdapterState) -> list[tuple[str, str]]:
    """(lora_A key, lora_B key) of every adapted module."""
    pairs = []
    for key in sorted(state):
        if ".lora_A." in key:
            b_key = key.replace(".lora_A.", ".lora_B.")
            if b_key in state:
                pairs.append((key, b_key))
    return pairs


def lora_product_gap(states: Sequence[AdapterState], weights: Sequence[float]) -> dict[str, float]:
    """Relative Frobenius gap ||mean(B)mean(A) - mean(BA)|| / ||mean(BA)||, mean and max over modules."""
    w = normalized_weights(weights)
    gaps = []
    for a_key, b_key in lora_pairs(states[0]):
        exact = sum(wk * (s[b_key].float() @ s[a_key].float()) for wk, s in zip(w, states))
        mean_b = sum(wk * s[b_key].float() for wk, s in zip(w, states))
        mean_a = sum(wk * s[a_key].float() for wk, s in zip(w, states))
        norm = torch.linalg.matrix_norm(exact).item()
        if norm > 0:
            gaps.append(torch.linalg.matrix_norm(mean_b @ mean_a - exact).item() / norm)
    if not gaps:
        return {"lora_gap_mean": 0.0, "lora_gap_max": 0.0}
    return {"lora_gap_mean": sum(gaps) / len(gaps), "lora_gap_max": max(gaps)}
