"""The server half of ``--client-sampling poisson``: the innermost strategy's sampler becomes a
:class:`fedit.server.sampling.PoissonSampler` (same seed). DP-FedAvg, built after it, reseeds
whatever sampler it finds from its secret seed."""

from __future__ import annotations

from fedit.config import Config
from fedit.errors import ConfigError
from fedit.server.sampling import PoissonSampler
from fedit.server.strategy import Strategy, base_strategy


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    if cfg.privacy.secure_aggregation:
        raise ConfigError("--client-sampling poisson: secure aggregation sets up its shares among a cohort fixed in "
                          "advance and a round may sample one client or none: drop one of them")
    base = base_strategy(strategy)
    base.sampler = PoissonSampler(base.num_clients, cfg.federation.seed)
    return strategy
