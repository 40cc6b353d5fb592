"""Personalization on the server (fedit.methods.personalization): the jobs say which one, and under
fedsa the server never has a client's B. A fedsa job carries A only and its reply A only (so codecs,
DP clipping and secure sums see only A); before the strategy's rule the server completes each update
with the global B (the seeded init, which no round changes), and the aggregate keeps that B exactly.
dual needs nothing here: its local adapter never leaves the client and the global one is aggregated
as usual."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from fedit.client.job import ClientJob, ClientUpdate, Scalar
from fedit.client.personal import CONFIG_KEY, is_b
from fedit.config import Config
from fedit.model import AdapterState
from fedit.server.strategy import Strategy, StrategyWrapper


class Personalized(StrategyWrapper):
    name = "personalized"

    def __init__(self, inner: Strategy, mode: str) -> None:
        super().__init__(inner)
        self.mode = mode

    def describe(self) -> str:
        return f"{self.mode}({self.inner.describe()})"

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        jobs = self.inner.configure_train(round_idx, global_state)
        for job in jobs:
            job.config[CONFIG_KEY] = self.mode
            if self.mode == "fedsa":  # B is the client's own: the job carries A only
                job.state = {k: v for k, v in job.state.items() if not is_b(k)}
        return jobs

    def client_config(self, round_idx: int, client_id: int) -> dict[str, Scalar]:
        return {**self.inner.client_config(round_idx, client_id), CONFIG_KEY: self.mode}

    def aggregate_train(self, round_idx: int, global_state: AdapterState,
                        updates: Sequence[ClientUpdate]) -> tuple[AdapterState, dict[str, Any]]:
        if self.mode == "fedsa":  # every rule sees whole adapters whose B did not move
            glob_b = {k: v for k, v in global_state.items() if is_b(k)}
            updates = [dataclasses.replace(u, state={**glob_b, **u.state}) for u in updates]
        state, metrics = self.inner.aggregate_train(round_idx, global_state, updates)
        if self.mode == "fedsa":  # the global B stays what it was (the clients keep theirs)
            state = {k: global_state[k].clone() if is_b(k) else v for k, v in state.items()}
        return state, metrics


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """The run's strategy with its personalization's jobs (fedsa, dual), else ``strategy``."""
    mode = cfg.personalization.personalization
    return Personalized(strategy, mode) if mode in ("fedsa", "dual") else strategy
