"""DP-FedAvg's server side: a :class:`StrategyWrapper` around any strategy (``--dp-clip``).

Each round the wrapper asks the sampled clients to clip their updates (``dp_clip`` in their client
config; :func:`fedit.privacy.dp.dp_client_transform` does it on the client, in the simulation and
on a Flower node alike), then, in ``aggregate_train``:

1. takes every update's delta to the global adapter and clips it again to C (a client that did not
   clip is clipped here; with secure aggregation the server only has the sum and trusts the clients);
2. central mode: adds N(0, (zC)^2) to the *sum* of the clipped deltas (local mode: the clients did);
3. divides by the number of *sampled* clients m, not by their example counts (the fixed denominator
   of DP-FedAvg: weights by example count, or by who replied, would depend on private data);
4. hands that one noised mean, as a single pooled update, to the inner strategy.

So the inner strategy (FedAvg, FedAvgM's momentum, FedProx...) only ever sees the privatized mean:
whatever it computes from it is post-processing and keeps the guarantee. (Flower's
``DifferentialPrivacyServerSideFixedClipping`` adds the noise *after* the inner aggregation, which
is the same for FedAvg but would leave, e.g., a momentum buffer fed by un-noised means.)

With ``--client-sampling poisson`` the number of sampled clients varies, possibly zero; the
denominator stays the expected number m = qN (DP-FedAvg's fixed denominator), and a round with no
client still releases the noise alone (the accountant counts every round; skipping it would tell
that nobody was sampled). ``--dp-clip auto`` adapts C each round (:mod:`fedit.privacy.adaptive_clip`):
the clients then send their updates unclipped and the server clips them.

After each aggregated round the accountant (:mod:`fedit.privacy.accounting`) gives epsilon at
``--dp-delta``; it goes into the round record. ``--dp-target-epsilon`` calibrates z for the planned
rounds, and no round that would go beyond it is run (a resumed run that asks for more rounds than
the budget allows is refused before it trains).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from fedit.client.job import ClientJob, ClientUpdate, PooledUpdate
from fedit.config import Config
from fedit.errors import ConfigError, FeditError
from fedit.model import AdapterState
from fedit.privacy import accounting
from fedit.privacy.adaptive_clip import AdaptiveClip
from fedit.privacy.dp import (SERVER_NOISE, add, clip_to_norm, gaussian_like, noise_generator, secret_seed,
                              sum_states)
from fedit.server.sampling import POISSON
from fedit.server.strategy import Strategy, StrategyWrapper, base_strategy, pool_updates

logger = logging.getLogger(__name__)

CLIP_SLACK = 1e-4  # a client's clipped update may come back a rounding error above C


class DPFedAvg(StrategyWrapper):
    name = "dp-fedavg"

    @property
    def releases_empty_rounds(self) -> bool:  # type: ignore[override]
        return self.mode == accounting.CENTRAL

    def __init__(self, inner: Strategy, *, clip: float, noise_multiplier: float | None, mode: str,
                 delta: float, target_epsilon: float | None, noise_seed: int | None, rounds: int,
                 accountant: str = accounting.RDP, adaptive: AdaptiveClip | None = None) -> None:
        super().__init__(inner)
        self.mode, self.delta, self.target, self.rounds = mode, delta, target_epsilon, rounds
        self.accountant, self.adaptive = accountant, adaptive
        self._clip = clip
        self.sampling = base_strategy(inner).sampler.kind
        self.fixed_seed = noise_seed is not None
        self.seed = noise_seed if noise_seed is not None else secret_seed()
        self._z = noise_multiplier          # None: calibrated from the target on first use
        self.z_given = noise_multiplier is not None
        self.releases = 0                   # aggregated rounds so far (each one a release)
        self.sampled = self.clients_per_round
        if mode == accounting.CENTRAL and not self.fixed_seed:
            # Amplification by sampling assumes nobody can predict who is sampled: config.yaml's
            # --seed would let them, so the sampler draws from the secret seed instead.
            base = base_strategy(inner)
            base.sampler = base.sampler.reseeded(self.seed)
        if self.delta >= 1.0 / self.num_clients:
            logger.warning("--dp-delta %g is not below 1 / %d clients: (epsilon, delta)-DP with such a delta "
                           "allows revealing one client outright", self.delta, self.num_clients)
        if noise_multiplier is not None and target_epsilon is not None:
            self._check_budget(rounds)

    @property
    def clip(self) -> float:
        return self.adaptive.clip if self.adaptive is not None else self._clip

    @property
    def count_noise(self) -> float | None:
        return self.adaptive.count_noise if self.adaptive is not None else None

    def describe(self) -> str:
        clip = "auto" if self.adaptive is not None else self.clip
        return f"{self.name}[{self.mode}, C={clip}, {self.sampling}]({self.inner.describe()})"

    def accounting_note(self) -> str:
        return accounting.describe(self.mode, self.sampling, self.accountant, self.adaptive is not None)

    @property
    def noise_multiplier(self) -> float:
        if self._z is None:
            self._z = accounting.calibrate_noise(self.mode, self.num_clients, self.clients_per_round, self.rounds,
                                                 self.target, self.delta, sampling=self.sampling,
                                                 accountant=self.accountant, count_noise=self.count_noise)
            logger.info("DP-FedAvg: noise multiplier z = %.4f calibrated for epsilon %g at delta %g after %d "
                        "rounds (%s mode, %d of %d clients per round)", self._z, self.target, self.delta,
                        self.rounds, self.mode, self.clients_per_round, self.num_clients)
        return self._z

    def epsilon(self, releases: int) -> float:
        return accounting.epsilon(self.mode, self.num_clients, self.clients_per_round, self.noise_multiplier,
                                  releases, self.delta, self.sampling, self.accountant, self.count_noise)

    def _check_budget(self, rounds: int) -> None:
        eps = self.epsilon(rounds)
        if self.target is not None and eps > self.target:
            how = "" if self.z_given else " (calibrated when the run started)"
            raise ConfigError(f"--rounds {rounds}: at --dp-noise-multiplier {self.noise_multiplier:.4g}{how} that many "
                              f"rounds reach epsilon {eps:.3g}, beyond the budget --dp-target-epsilon {self.target} "
                              f"(--dp-delta {self.delta}); nothing was run")

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        if self.target is not None and self.epsilon(self.releases + 1) > self.target:
            raise ConfigError(f"round {round_idx}: one more round would take epsilon to "
                              f"{self.epsilon(self.releases + 1):.3g}, beyond --dp-target-epsilon {self.target}")
        jobs = self.inner.configure_train(round_idx, global_state)
        # central mode's fixed denominator: the expected cohort under Poisson sampling, else the cohort (local
        # mode's noise is each client's own: the drawn clients' mean, as without DP)
        poisson_central = self.sampling == POISSON and self.mode == accounting.CENTRAL
        self.sampled = self.clients_per_round if poisson_central else max(len(jobs), 1)
        # adaptive clipping: the server needs each norm before clipping, so the clients do not clip
        keys: dict[str, Any] = {} if self.adaptive is not None else {"dp_clip": float(self.clip)}
        if self.mode == accounting.LOCAL:
            keys["dp_noise"] = float(self.noise_multiplier)
            if self.fixed_seed:
                keys["dp_noise_seed"] = int(self.seed)
        for job in jobs:
            job.config.update(keys)
        return jobs

    def _clipped_sum(self, global_state: AdapterState, updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict]:
        """The sum of the clients' deltas, each clipped to C (central mode), and what clipping did."""
        if len(updates) == 1 and isinstance(updates[0], PooledUpdate):  # secure aggregation: only the mean
            pooled = updates[0]
            if pooled.weighting != "equal":
                raise FeditError("DP-FedAvg needs the secure sum with equal weights (internal error)")
            return {k: v * len(pooled.client_ids) for k, v in own_delta(pooled.state, global_state).items()}, {}
        deltas, at_clip, norms = [], 0, []
        for u in updates:
            d = own_delta(u.state, global_state)
            if self.mode == accounting.CENTRAL:
                d, norm = clip_to_norm(d, self.clip)
                norms.append(norm)
                at_clip += norm >= self.clip * (1 - CLIP_SLACK)
                if norm > self.clip * (1 + CLIP_SLACK) and self.adaptive is None:
                    logger.warning("client %d: update norm %.4g is above --dp-clip %g: clipped by the server",
                                   u.client_id, norm, self.clip)
            deltas.append(d)
        stats = {"dp_clipped_fraction": at_clip / len(updates)} if self.mode == accounting.CENTRAL else {}
        return sum_states(deltas), {**stats, "norms": norms}

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        if updates:
            total, stats = self._clipped_sum(global_state, updates)
        else:  # Poisson sampling drew nobody: the round still releases its noise
            total = {k: torch.zeros_like(v, dtype=torch.float32)
                     for k, v in base_strategy(self.inner).client_state(0, global_state).items()}
            stats = {"norms": []}
        norms = stats.pop("norms", [])
        clip, z = self.clip, self.noise_multiplier
        if self.mode == accounting.CENTRAL and z > 0:
            total = add(total, gaussian_like(total, z * clip, noise_generator(self.seed, SERVER_NOISE, round_idx)))
        if self.adaptive is not None:
            stats.update(self.adaptive.step(norms, self.sampled, noise_generator(self.seed, SERVER_NOISE, round_idx, 1)))
        mean = add({k: global_state[k] for k in total}, total, 1.0 / self.sampled)
        pooled = pool_updates(updates, mean, "equal") if updates else \
            PooledUpdate(-1, mean, 1, {}, client_ids=[], weighting="equal")
        state, metrics = self.inner.aggregate_train(round_idx, global_state, [pooled])
        if not updates:
            metrics.pop("train_loss", None)
            metrics["num_examples"] = 0
        self.releases += 1
        metrics.update(stats)
        metrics.update({"dp_epsilon": self.epsilon(self.releases), "dp_delta": self.delta,
                        "dp_noise_multiplier": z, "dp_clip": clip, "dp_mode": self.mode,
                        "dp_denominator": self.sampled, "dp_releases": self.releases,
                        "dp_accounting": self.accounting_note()})
        return state, metrics

    def state_dict(self) -> dict[str, Any]:
        adaptive = {"adaptive_clip": self.adaptive.state_dict()} if self.adaptive is not None else {}
        return {**super().state_dict(), "dp": {"seed": self.seed, "noise_multiplier": self.noise_multiplier,
                                               "releases": self.releases, **adaptive}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        dp = state["dp"]
        self.seed, self._z, self.releases = int(dp["seed"]), float(dp["noise_multiplier"]), int(dp["releases"])
        if self.adaptive is not None:
            self.adaptive.load_state_dict(dp["adaptive_clip"])
        if self.target is not None:
            self._check_budget(self.rounds)


def own_delta(state: AdapterState, global_state: AdapterState) -> AdapterState:
    """A client's delta over the entries it sent (all of them, or B alone under --lora-aggregation ffa)."""
    return {k: state[k].float() - global_state[k].float() for k in state}


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """DP-FedAvg around ``strategy`` when the run sets --dp-clip (fedit.registry.WRAPPERS)."""
    p = cfg.privacy
    if not p.dp:
        return strategy
    sampling = base_strategy(strategy).sampler.kind
    accounting.check_accountant(p.dp_accountant, p.dp_mode, sampling)
    adaptive = None
    if p.dp_clip == "auto":
        if p.dp_mode != accounting.CENTRAL:
            raise ConfigError("--dp-clip auto: adaptive clipping needs --dp-mode central (the server must see "
                              "each update's norm)")
        if p.secure_aggregation:
            raise ConfigError("--dp-clip auto: adaptive clipping needs each update's norm, but "
                              "--secure-aggregation gives the server only their sum: set a number for --dp-clip")
        m = strategy.clients_per_round
        count_noise = p.dp_clip_count_noise if p.dp_clip_count_noise is not None else m / 20.0
        adaptive = AdaptiveClip(p.dp_clip_initial, p.dp_target_quantile, p.dp_clip_lr, count_noise)
    return DPFedAvg(strategy, clip=None if adaptive else float(p.dp_clip), noise_multiplier=p.dp_noise_multiplier,
                    mode=p.dp_mode, delta=p.dp_delta, target_epsilon=p.dp_target_epsilon, noise_seed=p.dp_noise_seed,
                    rounds=cfg.federation.rounds, accountant=p.dp_accountant, adaptive=adaptive)
