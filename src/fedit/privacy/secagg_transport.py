"""Secure aggregation in the simulation: the in-process transport, wrapped so that the round loop
gets what SecAgg+ would give it, one pooled reply (the unmasked weighted mean), never an update.

The clients train as usual (in this process); their updates then go through the same arithmetic as
Flower's ``secaggplus_mod`` and ``SecAggPlusWorkflow`` (:mod:`fedit.privacy.secagg`): weight,
quantise with stochastic rounding, sum modulo 2^32, dequantise, divide by the summed weights. The
rounding draws from a generator seeded by (--seed, round, client), so a run and its ``--resume``
stay bit-identical. Each client is weighted by its partition size, capped and share-limited as the
round loop caps plain replies (:func:`fedit.privacy.secagg.round_counts`). The round record gets
the bytes and messages the real protocol would send (:mod:`fedit.privacy.secagg_cost`). The simulation is one process: this shows the protocol's
effect on the model and its cost; the confidentiality is the Flower deployment's.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fedit.client.job import ClientJob, ClientUpdate
from fedit.config import Config
from fedit.errors import ConfigError
from fedit.privacy import secagg
from fedit.privacy.secagg_cost import round_cost

SECAGG_STREAM = 0x5EC  # mixed into the rounding seeds


class SimulatedSecureAggregation:
    """A Transport around another (the simulation's InProcessClients): same jobs, one pooled reply."""

    def __init__(self, inner, cfg: Config, client_sizes: Sequence[int]) -> None:
        self.inner, self.cfg, self.sizes = inner, cfg, client_sizes
        try:
            import flwr.common.secure_aggregation  # noqa: F401  (the protocol's arithmetic is Flower's)
        except ImportError:
            raise ConfigError("--secure-aggregation uses Flower's SecAgg+: pip install 'fedit[flower]'") from None

    def train(self, jobs: Sequence[ClientJob]) -> list:
        if any(job.arrays for job in jobs):
            raise ConfigError("--secure-aggregation sums adapters only: this strategy sends clients extra tensors")
        counts = secagg.round_counts([job.client_id for job in jobs], dict(enumerate(self.sizes)), self.cfg)
        weights = [secagg.client_weight(counts[job.client_id], self.cfg) for job in jobs]
        params = secagg.round_params(self.cfg, len(jobs), weights)
        replies = self.inner.train(jobs)
        done = [(job, w, r) for job, w, r in zip(jobs, weights, replies) if isinstance(r, ClientUpdate)]
        failures = [r for r in replies if not isinstance(r, ClientUpdate)]
        if not done:
            return failures
        if any(r.arrays for _, _, r in done):
            raise ConfigError("--secure-aggregation sums adapters only: a client transform added extra tensors")
        deltas = [secagg.update_delta(r, job) for job, _, r in done]
        rngs = [np.random.default_rng([self.cfg.federation.seed, SECAGG_STREAM, job.round, job.client_id])
                for job, _, _ in done]
        mean = secagg.secure_mean(deltas, [w for _, w, _ in done], params, rngs)
        metrics = [secagg.fitres_metrics(r, secagg.clipped_values(d, w, params))
                   for (_, w, r), d in zip(done, deltas)]
        fitins = [secagg.fitins_config(job, w) for job, w, _ in done]
        shapes = [tuple(v.shape) for v in jobs[0].state.values()]
        cost = round_cost(params, shapes, fitins, metrics)
        members = [(r.client_id, m) for (_, _, r), m in zip(done, metrics)]
        return [secagg.pooled_update(done[0][0], mean, members, self.cfg, cost, counts), *failures]

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
