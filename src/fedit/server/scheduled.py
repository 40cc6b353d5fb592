"""A learning-rate schedule across the federation, as a server-side wrapper around any strategy.

The server owns the schedule: each round it puts the learning rate into the client jobs
(``--lr-schedule-unit round``: the job's ``lr`` is that round's lr) or names the schedule for the
client to follow step by step (``step``: ``lr`` is the peak, plus ``lr_schedule``,
``lr_warmup_steps`` and ``lr_total_rounds``; see fedit.schedules). The schedule's horizon (the
number of rounds it spans) is server state, saved with every checkpoint: a resumed run follows
the same schedule bit for bit, and a run extended with ``--resume --rounds N`` keeps the horizon
it started with (its later rounds train at the schedule's last value; a warning says so).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

from fedit.client.job import ClientJob, ClientUpdate
from fedit.config import Config
from fedit.model import AdapterState
from fedit.schedules import round_lr
from fedit.server.strategy import Strategy, StrategyWrapper

logger = logging.getLogger(__name__)


class ScheduledLR(StrategyWrapper):
    name = "lr-schedule"

    def __init__(self, inner: Strategy, *, lr: float, shape: str, unit: str, warmup_steps: int,
                 rounds: int) -> None:
        super().__init__(inner)
        self.lr, self.shape, self.unit, self.warmup_steps = lr, shape, unit, warmup_steps
        self.horizon = rounds   # rounds the schedule spans: server state (checkpointed)

    def describe(self) -> str:
        return f"{self.name}[{self.shape}/{self.unit}, warmup {self.warmup_steps}]({self.inner.describe()})"

    def schedule_config(self, round_idx: int) -> dict[str, Any]:
        """The keys this round's jobs carry (fedit.client.job.CLIENT_KEYS)."""
        if self.unit == "round":
            return {"lr": round_lr(self.lr, self.shape, round_idx, self.horizon, self.warmup_steps)}
        return {"lr": self.lr, "lr_schedule": self.shape, "lr_warmup_steps": self.warmup_steps,
                "lr_total_rounds": self.horizon}

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        if round_idx > self.horizon:
            logger.warning("round %d is past the %d rounds the learning-rate schedule spans: it trains at "
                           "the schedule's last value", round_idx, self.horizon)
        jobs = self.inner.configure_train(round_idx, global_state)
        for job in jobs:
            job.config.update(self.schedule_config(round_idx))
        return jobs

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        state, metrics = self.inner.aggregate_train(round_idx, global_state, updates)
        if self.unit == "round":
            metrics["lr"] = self.schedule_config(round_idx)["lr"]
        return state, metrics

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lr_schedule": {"horizon": self.horizon}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state.get("lr_schedule")
        if saved is not None:
            self.horizon = int(saved["horizon"])


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """``registry.WRAPPERS`` entry: the schedule when the run asks for one, else ``strategy``."""
    train = cfg.train
    if train.lr_schedule == "constant" and train.warmup_steps == 0:
        return strategy
    return ScheduledLR(strategy, lr=train.lr, shape=train.lr_schedule, unit=train.lr_schedule_unit,
                       warmup_steps=train.warmup_steps, rounds=cfg.federation.rounds)
