"""LoRA-aware aggregation: pure functions over adapter states (dicts of tensors). No I/O, no model.

A module's update is dW = s * B @ A (s = alpha / r, the same for every client: a rank-r_k client
uses alpha * r_k / r, see fedit.model.client_adapters). The global adapter has rank r (``--lora-r``)
and the union of the modules; a client holds a truncation of it: its modules, the first r_k rows
of A and the first r_k columns of B (:func:`client_view`). The rules (docs/methods.md):

- ``factors`` / ``zero-pad``: every factor padded with zeros to the global rank and averaged
  (HetLoRA; with equal ranks this is plain FedAvg of A and B, the paper's rule). Not exact:
  mean(B) mean(A) != mean(B A).
- ``ffa``: clients send only B (A is the shared seeded init, never trained); B is zero-padded and
  averaged, A kept. Exact: mean_k(B_k) A = mean_k(B_k A), also with mixed ranks.
- ``product-svd`` (FlexLoRA): the exact weighted mean of B_k A_k, re-factored into rank r by a
  truncated SVD (the best rank-r approximation); the share of its energy the truncation drops is
  reported. Exact when the mean has rank <= r (e.g. r >= the sum of the clients' ranks).

A module is averaged over the clients that trained it (weights renormalised among them); a
module no client trained keeps its global value.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fedit.errors import ConfigError
from fedit.model import AdapterState
from fedit.registry import method
from fedit.server.aggregate import normalized_weights, weighted_mean

A_TAG, B_TAG = ".lora_A.", ".lora_B."
PEFT_PREFIX = "base_model.model."


def module_of(key: str) -> str | None:
    """The module a LoRA factor key belongs to (``...q_proj``), None for other entries."""
    for tag in (A_TAG, B_TAG):
        if tag in key:
            return key.split(tag, 1)[0]
    return None


def module_selected(module: str, targets: str) -> bool:
    """Does ``--client-targets``-style ``targets`` (all-linear or a comma list) select ``module``?
    The rule of peft's list targets: the name equals a target or ends with ``.target``."""
    if targets == "all-linear":
        return True
    name = module[len(PEFT_PREFIX):] if module.startswith(PEFT_PREFIX) else module
    return any(name == t or name.endswith("." + t) for t in targets.split(","))


def truncate(key: str, tensor: torch.Tensor, rank: int | None) -> torch.Tensor:
    """The first ``rank`` components of one factor: rows of A, columns of B (all for None)."""
    if rank is None:
        return tensor
    if A_TAG in key:
        return tensor[:rank]
    if B_TAG in key:
        return tensor[:, :rank]
    return tensor


def pad(key: str, tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tensor`` zero-padded to the global factor ``like`` (the inverse of :func:`truncate`)."""
    tensor = tensor.float()
    if tensor.shape == like.shape:
        return tensor
    out = torch.zeros_like(like, dtype=torch.float32)
    if A_TAG in key:
        out[: tensor.shape[0]] = tensor
    else:
        out[:, : tensor.shape[1]] = tensor
    return out


def client_view(global_state: AdapterState, rank: int | None, targets: str, *, b_only: bool = False) -> AdapterState:
    """What a client of ``rank`` (None: the global rank) on ``targets`` receives: its modules,
    truncated; only B under ffa."""
    out = {}
    for key, tensor in global_state.items():
        module = module_of(key)
        if module is not None and not module_selected(module, targets):
            continue
        if b_only and A_TAG in key:
            continue
        part = truncate(key, tensor, rank)
        out[key] = part.clone() if part.shape != tensor.shape else tensor
    return out


def _holders(key: str, states: Sequence[AdapterState], weights: Sequence[float]) -> tuple[list, list[float]]:
    """The clients' tensors for ``key`` and their weights renormalised among them."""
    held = [(s[key], w) for s, w in zip(states, weights) if key in s]
    if not held:
        return [], []
    return [t for t, _ in held], normalized_weights([w for _, w in held])


def mean_factors(global_state: AdapterState, states: Sequence[AdapterState],
                 weights: Sequence[float], *, per_component: bool = False) -> AdapterState:
    """factors / zero-pad / ffa: each factor zero-padded to the global shape and averaged over
    the clients that sent it; a factor no client sent keeps its global value. ``per_component``:
    each rank component (row of A, column of B) moves by its change averaged over the clients that
    hold it, instead of counting a lower-rank client's missing components as zeros."""
    if all(s.keys() == global_state.keys() and all(s[k].shape == v.shape for k, v in global_state.items())
           for s in states):
        return weighted_mean(states, weights)  # every client trained the whole global adapter: FedAvg
    out: AdapterState = {}
    for key, ref in global_state.items():
        tensors, w = _holders(key, states, weights)
        if not tensors:
            out[key] = ref.float()
            continue
        if per_component and (A_TAG in key or B_TAG in key):
            out[key] = component_mean(key, ref, tensors, w)
            continue
        acc = torch.zeros_like(ref, dtype=torch.float32)
        for wk, t in zip(w, tensors):
            acc.add_(pad(key, t, ref), alpha=wk)
        out[key] = acc
    return out


def component_mean(key: str, ref: torch.Tensor, tensors: Sequence[torch.Tensor], w: Sequence[float]) -> torch.Tensor:
    """The global factor plus, per rank component, the weighted mean change of the clients holding it."""
    axis = 0 if A_TAG in key else 1
    acc = torch.zeros_like(ref, dtype=torch.float32)
    cover = torch.zeros(ref.shape[axis], dtype=torch.float32)
    for wk, t in zip(w, tensors):
        held = t.shape[axis]
        acc.add_(pad(key, t.float() - truncate(key, ref, held).float(), ref), alpha=wk)
        cover[:held] += wk
    shape = (-1, 1) if axis == 0 else (1, -1)
    return ref.float() + acc / cover.clamp_min(1e-30).view(shape)


def factor_rule(global_state: AdapterState, states: Sequence[AdapterState], weights: Sequence[float], *,
                per_component: bool = False) -> tuple[AdapterState, dict[str, float]]:
    """The server half of factors, zero-pad and ffa (fedit.methods.aggregation)."""
    return mean_factors(global_state, states, weights, per_component=per_component), {}


def product_rule(global_state: AdapterState, states: Sequence[AdapterState], weights: Sequence[float], *,
                 per_component: bool = False) -> tuple[AdapterState, dict[str, float]]:
    """The server half of product-svd, with the share of energy its truncation drops."""
    new, dropped = mean_products(global_state, states, weights, per_component=per_component)
    if not dropped:
        return new, {}
    return new, {"svd_energy_dropped_mean": sum(dropped) / len(dropped), "svd_energy_dropped_max": max(dropped)}


def factor_pairs(state: AdapterState) -> list[tuple[str, str]]:
    """(A key, B key) of every module of a (global) adapter."""
    return [(k, k.replace(A_TAG, B_TAG)) for k in state if A_TAG in k and k.replace(A_TAG, B_TAG) in state]


def complete(global_state: AdapterState, state: AdapterState, a_key: str, b_key: str, *,
             from_global: bool = False) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A client's (A, B) of one module at the global rank, or None if it did not train it; an A
    it did not send (ffa) is the global one, which its own A is a truncation of. ``from_global``:
    the components it does not hold are the global ones (unchanged), not zeros."""
    if b_key not in state:
        return None
    a = pad(a_key, state[a_key], global_state[a_key]) if a_key in state else global_state[a_key].float()
    b = pad(b_key, state[b_key], global_state[b_key])
    held = state[b_key].shape[1]
    if from_global and held < b.shape[1]:
        a, b = a.clone(), b.clone()
        b[:, held:] = global_state[b_key][:, held:].float()
        a[held:] = global_state[a_key][held:].float()
    return a, b


def product_svd(factors: Sequence[tuple[torch.Tensor, torch.Tensor]], weights: Sequence[float],
                rank: int, fallback_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A, B, share of energy dropped): the best rank-``rank`` factorisation B A of
    M = sum_k w_k B_k A_k, with A = V^T (orthonormal rows) and B = U S, components sorted by
    singular value. M is never formed: with P = [w_k B_k] and Q = [A_k], M = P Q, and QR of P and
    Q^T leaves an SVD of a (sum r_k)-square matrix. Components M does not fill (its rank < ``rank``)
    get a zero B column and the row of ``fallback_a``, so they stay trainable."""
    p = torch.cat([w * b.double() for (a, b), w in zip(factors, weights)], dim=1)   # d_out x R
    q = torch.cat([a.double() for a, b in factors], dim=0)                          # R x d_in
    qp, rp = torch.linalg.qr(p)
    qq, rq = torch.linalg.qr(q.T)
    u, s, vh = torch.linalg.svd(rp @ rq.T, full_matrices=False)
    keep = min(rank, s.numel())
    b = (qp @ u[:, :keep]) * s[:keep]
    a = (qq @ vh[:keep].T).T
    energy = float((s ** 2).sum())
    dropped = float((s[keep:] ** 2).sum()) / energy if energy > 0 else 0.0
    out_a = fallback_a.float().clone()
    out_b = torch.zeros(b.shape[0], rank, dtype=torch.float32)
    out_a[:keep] = a.float()
    out_b[:, :keep] = b.float()
    return out_a, out_b, dropped


def mean_products(global_state: AdapterState, states: Sequence[AdapterState],
                  weights: Sequence[float], *, per_component: bool = False) -> tuple[AdapterState, list[float]]:
    """product-svd over every module; also the energy share dropped per aggregated module.
    ``per_component``: a lower-rank client's product keeps the global components it does not hold."""
    out: AdapterState = {k: v.float() for k, v in global_state.items()}
    dropped = []
    for a_key, b_key in factor_pairs(global_state):
        held = [(f, w) for s, w in zip(states, weights)
                if (f := complete(global_state, s, a_key, b_key, from_global=per_component))]
        if not held:
            continue
        rank = global_state[a_key].shape[0]
        a, b, share = product_svd([f for f, _ in held], normalized_weights([w for _, w in held]), rank,
                                  global_state[a_key])
        out[a_key], out[b_key] = a, b
        dropped.append(share)
    return out, dropped


def product_norm(p: torch.Tensor, q: torch.Tensor) -> float:
    """||p @ q||_F without forming the product: sqrt(sum((p^T p) * (q q^T))), in float64."""
    p, q = p.double(), q.double()
    return float(((p.T @ p) * (q @ q.T)).sum().clamp_min(0.0).sqrt())


def lora_gap(global_state: AdapterState, states: Sequence[AdapterState], weights: Sequence[float]) -> dict[str, float]:
    """Relative Frobenius gap ||mean(B) mean(A) - mean(B A)|| / ||mean(B A)||, mean and max over
    modules: what averaging the factors loses. Factors are completed to the global rank first;
    both norms are taken in factored form (a few (K+1)r-square products per module, not d_out x d_in)."""
    gaps = []
    for a_key, b_key in factor_pairs(global_state):
        held = [(f, w) for s, w in zip(states, weights) if (f := complete(global_state, s, a_key, b_key))]
        if not held:
            continue
        w = normalized_weights([wk for _, wk in held])
        p = torch.cat([wk * b for wk, ((a, b), _) in zip(w, held)], dim=1)     # exact mean = p @ q
        q = torch.cat([a for (a, b), _ in held], dim=0)
        mean_b = sum(wk * b for wk, ((a, b), _) in zip(w, held))
        mean_a = sum(wk * a for wk, ((a, b), _) in zip(w, held))
        norm = product_norm(p, q)
        if norm > 0:
            gaps.append(product_norm(torch.cat([mean_b, p], dim=1), torch.cat([mean_a, -q], dim=0)) / norm)
    if not gaps:
        return {"lora_gap_mean": 0.0, "lora_gap_max": 0.0}
    return {"lora_gap_mean": sum(gaps) / len(gaps), "lora_gap_max": max(gaps)}


def aggregate_lora(rule: str, global_state: AdapterState, states: Sequence[AdapterState],
                   weights: Sequence[float], *, gap: bool = True,
                   hetero_rule: str = "paper") -> tuple[AdapterState, dict[str, float]]:
    """The new global adapter under ``rule`` (``--lora-aggregation``, a registered aggregation method)
    and the round's LoRA metrics (``gap``: also the LoRA factor-averaging gap, which needs every
    client's own factors). ``hetero_rule``: ``--hetero-rule`` (paper or per-component)."""
    if not states:
        raise ValueError("nothing to aggregate")
    try:
        combine = method("aggregation", rule).half("server")
    except ConfigError:
        raise ValueError(f"unknown LoRA aggregation {rule!r}") from None
    metrics = lora_gap(global_state, states, weights) if gap else {}
    new, extra = combine(global_state, states, weights, per_component=hetero_rule == "per-component")
    metrics.update(extra)
    return new, metrics
