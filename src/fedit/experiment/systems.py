"""The systems an experiment compares and the training budget of each.

Budget rules (stated in every report):
- ``fedit``: the federated run as configured (R rounds, m sampled clients per round, each doing
  S_k local steps: ``--local-steps``, else ceil(epochs * n_k / batch)).
- ``local-j`` (client k): k's own data only, one continuous run of
  ``every-round``: R * S_k steps (as if k were sampled in every round: the most generous local
  budget, so FedIT cannot win by starving the local baselines), or
  ``expected``: round(R * m / N * S_k) steps (the local work k does in the federation on average).
- ``centralized``: all clients' data pooled, exactly as many optimizer steps as the whole federation
  performs (the sum of S_k over every sampled client of every round).
- ``base``: the initial adapter (LoRA B = 0), i.e. the untuned base model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from fedit.client.batching import num_steps
from fedit.config import Config, TrainConfig
from fedit.data import Example
from fedit.server import build_strategy


@dataclass(frozen=True)
class SystemSpec:
    name: str
    kind: str                      # base | local | centralized | fedit
    client: int | None = None      # local: the client whose data it trains on
    steps: int = 0                 # optimizer steps (fedit: total over all clients and rounds)

    def describe(self) -> str:
        if self.kind == "base":
            return "base model, no tuning"
        if self.kind == "local":
            return f"client {self.client}'s data only, {self.steps} steps"
        if self.kind == "centralized":
            return f"all clients' data pooled, {self.steps} steps"
        return f"federated ({self.steps} client steps in total)"


def client_steps(n_examples: int, train: TrainConfig) -> int:
    """S_k: the optimizer steps one local round of a client with ``n_examples`` takes."""
    return num_steps(n_examples, train.batch_size, train.local_epochs, train.local_steps)


def federation_plan(cfg: Config, num_clients: int) -> list[list[int]]:
    """The clients of every round, exactly as the fedit run's strategy will sample them."""
    strategy = build_strategy(cfg, num_clients)
    return [[job.client_id for job in strategy.configure_train(r, {})] for r in range(1, cfg.federation.rounds + 1)]


def category_mix(clients: Sequence[Sequence[Example]], categories: Sequence[str]) -> np.ndarray:
    """Row k: client k's share of records per category."""
    mix = np.zeros((len(clients), len(categories)))
    index = {c: i for i, c in enumerate(categories)}
    for k, part in enumerate(clients):
        for ex in part:
            mix[k, index[ex.category]] += 1
        mix[k] /= max(1, len(part))
    return mix


def choose_local_clients(clients: Sequence[Sequence[Example]], k: int) -> list[int]:
    """K clients with different category mixes: the largest client first, then each time the
    client farthest (total variation) from all chosen so far; ties go to the lower id."""
    candidates = [i for i, part in enumerate(clients) if part]
    if k <= 0 or not candidates:
        return []
    categories = sorted({ex.category for part in clients for ex in part})
    mix = category_mix(clients, categories)
    chosen = [max(candidates, key=lambda i: (len(clients[i]), -i))]
    while len(chosen) < min(k, len(candidates)):
        rest = [i for i in candidates if i not in chosen]
        dist = {i: min(0.5 * np.abs(mix[i] - mix[j]).sum() for j in chosen) for i in rest}
        chosen.append(max(rest, key=lambda i: (dist[i], -i)))
    return chosen


def plan_systems(cfg: Config, sizes: Sequence[int], local_clients: Sequence[int],
                 local_budget: str) -> list[SystemSpec]:
    """Every system of the experiment, in report order, with its step budget.

    ``sizes``: the number of tokenized training examples of every client.
    """
    rounds = cfg.federation.rounds
    steps = [client_steps(n, cfg.train) for n in sizes]
    plan = federation_plan(cfg, len(sizes))
    total = sum(steps[c] for clients in plan for c in clients)
    per_round = cfg.federation.clients_to_sample(len(sizes))
    specs = [SystemSpec("base", "base")]
    for j, k in enumerate(local_clients, start=1):
        budget = rounds * steps[k] if local_budget == "every-round" \
            else max(1, round(rounds * per_round / len(sizes) * steps[k]))
        specs.append(SystemSpec(f"local-{j}", "local", k, budget))
    specs.append(SystemSpec("centralized", "centralized", None, total))
    specs.append(SystemSpec("fedit", "fedit", None, total))
    return specs


def budget_rule(local_budget: str) -> str:
    local = ("R x S_k steps (as if client k were sampled in every round)" if local_budget == "every-round"
             else "round(R x m/N x S_k) steps (the local work client k does in the federation on average)")
    return (f"local-j trains client k on its own data for {local}; centralized trains on all clients' "
            "data pooled for as many optimizer steps as the whole federation (sum of S_k over every "
            "sampled client of every round); S_k = --local-steps, else ceil(--local-epochs x n_k / "
            "--batch-size); base is the untuned model (LoRA B = 0).")


def spec_record(spec: SystemSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "description": spec.describe()}
