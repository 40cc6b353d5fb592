"""Secure aggregation (``--secure-aggregation``): Flower's SecAgg+ arithmetic, its parameters and
its cost, shared by the Flower deployment (the real protocol, fedit.runners.flower.secagg) and the
simulation (the same arithmetic in process, :mod:`fedit.privacy.secagg_transport`).

What a client contributes is its *update* (trained - global adapter), pre-multiplied by its weight
inside the protocol, as Flower's ``secaggplus_mod`` does: with ``r = round(w / w_max * Q) / Q`` it
sends ``[r*Q, quantize(r * delta)]`` masked; the server unmasks only the sum and divides by the
summed ``r*Q``, i.e. it learns ``sum_i r_i delta_i / sum_i r_i`` and nothing about any one client.
The weight ``w`` is the client's record count as the server knows it (the simulation's partition,
the node's answer at the Flower roll call) or 1 under DP-FedAvg (fixed weights); the server, not
the client, sets it (a client claiming more examples cannot take a larger share).

Quantisation: each coordinate of ``r * delta`` is clipped to [-c, c] and stochastically rounded to
one of Q levels, so the unmasked mean differs from the exact weighted mean by less than
``n * 2c/Q / sum_i r_i`` per coordinate for n clients (:func:`error_bound`), plus what was clipped.
The masks (pairwise and private, from Flower's key agreement and Shamir sharing) cancel exactly in
the sum modulo 2^32, so the simulation leaves them out and computes the identical integers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from fedit.config import Config
from fedit.errors import ConfigError

logger = logging.getLogger(__name__)

MODULUS = 1 << 32     # Flower's default modulus_range: masks and sums live modulo 2^32
STAGES = 4            # setup, share keys, collect masked vectors, unmask: 4 round trips per round
LOCAL_NOISE_WIDTH = 6.0  # --dp-mode local: clip range C (1 + 6 z): beyond 6 std of the client's noise


@dataclass(frozen=True)
class SecAggParams:
    """One round's SecAgg+ settings, resolved for the clients it sampled."""

    clients: int             # sampled clients n
    num_shares: int          # s: each client's neighbours + itself (n: all, i.e. SecAgg)
    threshold: int           # t: shares needed to rebuild a secret; n - t clients may drop out
    clipping_range: float    # c
    quantization_range: int  # Q
    max_weight: float        # w_max of the round

    @property
    def flwr_num_shares(self) -> int | float:
        """As SecAggPlusWorkflow takes it: 1.0 means every sampled client."""
        return 1.0 if self.num_shares >= self.clients else self.num_shares

    @property
    def dropouts_tolerated(self) -> int:
        return self.num_shares - self.threshold


def clipping_range(cfg: Config) -> float:
    """c: --secagg-clipping-range, else what the update provably stays within (DP), else 1.0."""
    p = cfg.privacy
    if p.secagg_clipping_range is not None:
        return p.secagg_clipping_range
    if p.dp:
        z = p.dp_noise_multiplier or 0.0
        return p.dp_clip * (1 + LOCAL_NOISE_WIDTH * z) if p.dp_mode == "local" else p.dp_clip
    return 1.0


def round_params(cfg: Config, clients: int, weights: Sequence[float]) -> SecAggParams:
    """The round's settings for ``clients`` sampled clients with these weights; refuses what the
    protocol cannot do, in one line naming the flags."""
    p = cfg.privacy
    if clients < 2:
        raise ConfigError(f"--secure-aggregation needs at least 2 clients per round, got {clients} "
                          "(--clients-per-round / --fraction)")
    q = p.secagg_quantization_range
    if (clients + 1) * q >= MODULUS:
        raise ConfigError(f"--secagg-quantization-range {q} with {clients} clients per round overflows SecAgg+'s "
                          f"sum modulo 2^32; lower --secagg-quantization-range or --clients-per-round")
    shares = min(p.secagg_num_shares or clients, clients)
    threshold = max(p.secagg_threshold or shares // 2 + 1, 2)
    most = shares if shares >= clients else shares - 1   # SecAgg+ (fewer shares than clients): t < s
    if threshold > most:
        raise ConfigError(f"--secagg-threshold {threshold} is more than {most}, the most a round of {clients} "
                          f"clients with {shares} shares allows (--secagg-num-shares)")
    return SecAggParams(clients, shares, threshold, clipping_range(cfg), q, float(max(weights)))


def client_weight(num_examples: int, cfg: Config) -> int:
    """A client's weight inside the protocol: its record count, or 1 under DP-FedAvg."""
    return 1 if cfg.privacy.dp else int(num_examples)


def round_counts(client_ids: Sequence[int], sizes: Mapping[int, int], cfg: Config) -> dict[int, int]:
    """{client: the count the secure sum weights it by}: the record counts the server knows (the
    simulation's partitions, the Flower roll call), capped and share-limited exactly as the round
    loop caps the counts of plain replies (fedit.server.trust), so that secure aggregation gives a
    node claiming 10**12 records no more weight than plain FedAvg does."""
    from fedit.server.trust import trusted_counts

    rob = cfg.robustness
    claims = {cid: max(1, int(sizes.get(cid) or 1)) for cid in client_ids}
    return trusted_counts(claims, {c: n for c, n in sizes.items() if n}, rob.max_client_examples,
                          rob.max_client_share)


def stochastic_round(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flower's ``_stochastic_round`` (quantization.py), drawing from ``rng`` instead of the global
    NumPy RNG: ceil, then down by one with probability ceil(x) - x."""
    ret = np.ceil(arr).astype(np.int32)
    ret[rng.random(ret.shape) < ret - arr] -= 1
    return ret


def masked_input(delta: Sequence[np.ndarray], weight: float, params: SecAggParams,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """What ``secaggplus_mod`` puts under the masks for one client: ``[r*Q, quantize(r * delta)]``."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, parameters_multiply

    c, q = params.clipping_range, params.quantization_range
    q_ratio = round(weight / params.max_weight * q)
    scaled = parameters_multiply(list(delta), q_ratio / q)
    quantizer = q / (2 * c)
    quantized = [stochastic_round((np.clip(a, -c, c) + c) * quantizer, rng) for a in scaled]
    return factor_combine(q_ratio, quantized)


def unmasked_mean(total: Sequence[np.ndarray], contributors: int, params: SecAggParams) -> list[np.ndarray]:
    """What ``SecAggPlusWorkflow`` makes of the unmasked sum of ``contributors`` inputs: the weighted
    mean of their updates (float64)."""
    from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_extract, parameters_mod
    from flwr.common.secure_aggregation.quantization import dequantize

    q_total, recon = factor_extract(parameters_mod(list(total), MODULUS))
    mean = dequantize(recon, params.clipping_range, params.quantization_range)
    offset = -(contributors - 1) * params.clipping_range
    for vec in mean:
        vec += offset
        vec *= params.quantization_range / q_total
    return mean


def secure_mean(deltas: Sequence[Sequence[np.ndarray]], weights: Sequence[float], params: SecAggParams,
                rngs: Sequence[np.random.Generator]) -> list[np.ndarray]:
    """The aggregate SecAgg+ releases for these clients' updates (masks cancel: left out)."""
    inputs = [masked_input(d, w, params, rng) for d, w, rng in zip(deltas, weights, rngs)]
    total = [sum(arrs[i].astype(np.int64) for arrs in inputs) for i in range(len(inputs[0]))]
    return unmasked_mean(total, len(inputs), params)


def clipped_values(delta: Sequence[np.ndarray], weight: float, params: SecAggParams) -> int:
    """How many coordinates of a client's weighted update quantisation clips (reported by the client)."""
    r = round(weight / params.max_weight * params.quantization_range) / params.quantization_range
    return int(sum(np.count_nonzero(np.abs(a * r) > params.clipping_range) for a in delta))


def error_bound(weights: Sequence[float], params: SecAggParams) -> float:
    """Largest difference, per coordinate, between the unmasked mean and the exact weighted mean of
    updates within [-c, c]: stochastic rounding moves each input by less than one level (2c/Q), and
    the weights themselves are rounded to multiples of 1/Q (which moves the mean by at most
    2c * sum |r_i - w_i/w_max| / sum r_i)."""
    q, c = params.quantization_range, params.clipping_range
    ratios = [round(w / params.max_weight * q) / q for w in weights]
    exact = [w / params.max_weight for w in weights]
    weight_error = 2 * c * sum(abs(a - b) for a, b in zip(ratios, exact)) / sum(ratios)
    return len(weights) * (2 * c / q) / sum(ratios) + weight_error


# A fedit job through SecAgg+: the workflow sends each client a legacy FitIns (its arrays and a
# flat config) and reads back a FitRes (arrays, example count, metrics); these carry the job.
JOB_PREFIX = "fedit.job."


def fitins_config(job, weight: int) -> dict[str, Any]:
    """The FitIns config of a job: round, client, weight, the adapter's key order, the client config."""
    return {"fedit.round": job.round, "fedit.client-index": job.client_id, "fedit.weight": int(weight),
            "fedit.keys": "\n".join(job.state), **{JOB_PREFIX + k: v for k, v in job.config.items()}}


def job_from_fitins(arrays: Sequence[np.ndarray], config: Mapping[str, Any]):
    """The ClientJob a FitIns carries (its inverse: :func:`fitins_config`)."""
    import torch

    from fedit.client.job import ClientJob

    keys = str(config["fedit.keys"]).split("\n")
    state = {k: torch.from_numpy(np.array(a, dtype=np.float32)) for k, a in zip(keys, arrays, strict=True)}
    job_config = {k[len(JOB_PREFIX):]: v for k, v in config.items() if k.startswith(JOB_PREFIX)}
    return ClientJob(int(config["fedit.client-index"]), int(config["fedit.round"]), state, job_config)


def update_delta(update, job) -> list[np.ndarray]:
    """What a client puts into the secure sum: its update (trained - global), in the job's key order."""
    return [(update.state[k].float() - job.state[k].float()).numpy() for k in job.state]


def fitres_metrics(update, clipped: int) -> dict[str, Any]:
    """What a client reports in the clear beside its masked update: its metrics, example count and
    how many coordinates quantisation clipped (never its adapter)."""
    return {**update.metrics, "fedit.num-examples": int(update.num_examples), "fedit.secagg-clipped": int(clipped)}


def pooled_update(job, mean: Sequence[np.ndarray], members: Sequence[tuple[int, Mapping[str, Any]]], cfg: Config,
                  round_metrics: dict[str, Any], counts: Mapping[int, int] | None = None,
                  names: Mapping[int, str] | None = None):
    """The one reply a secure round yields: the global adapter plus the unmasked mean update,
    standing for ``members`` ((client, the metrics it reported in the clear), in job order),
    each counted as ``counts`` (what the secure sum weighted it by, :func:`round_counts`; its
    own claim is kept in ``member_claims``). A member's clear-text metrics are checked like a
    plain reply's: bad ones are dropped (that member's only, named by ``names``), the sum stays."""
    import torch

    from fedit.client.job import ClientUpdate
    from fedit.server.strategy import pool_updates

    state = {k: job.state[k].float() + torch.from_numpy(np.asarray(a)).float() for k, a in zip(job.state, mean)}
    replies, claims, clipped = [], {}, 0
    for cid, metrics in members:
        metrics = dict(metrics)
        claims[cid] = metrics.pop("fedit.num-examples", None)
        clipped += _count(metrics.pop("fedit.secagg-clipped", 0))
        metrics = member_metrics(cid, metrics, claims[cid], names.get(cid, f"client {cid}") if names else None)
        replies.append(ClientUpdate(cid, {}, counts[cid] if counts else _count(claims[cid]) or 1, metrics))
    pooled = pool_updates(replies, state, "equal" if cfg.privacy.dp else "examples")
    pooled.member_claims = {cid: n for cid, n in claims.items() if _count(n)}
    pooled.round_metrics = {**round_metrics, "secagg_clipped_values": clipped}
    if clipped:
        logger.warning("secure aggregation clipped %d update coordinate(s) to +-%g before quantisation: raise "
                       "--secagg-clipping-range", clipped, clipping_range(cfg))
    return pooled


def _count(value: Any) -> int:
    """A reported count as an int (0 when it is not a non-negative int)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def member_metrics(cid: int, metrics: dict[str, Any], claim: Any, name: str | None) -> dict[str, Any]:
    """A member's clear-text metrics if they pass the checks of a plain reply, else {} and one
    warning naming that member (its masked update is already in the sum and stays there)."""
    from fedit.errors import UpdateError
    from fedit.server.checks import check_metrics

    try:
        if not _count(claim):
            raise UpdateError(f"client {cid}: fedit.num-examples is {claim!r}, expected a positive int")
        check_metrics(cid, metrics)
    except UpdateError as exc:
        reason = str(exc).split(": ", 1)[-1]
        logger.warning("dropping the clear-text metrics of %s: %s; its update stays in the secure sum",
                       name or f"client {cid}", reason)
        return {}
    return metrics
