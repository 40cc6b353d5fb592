"""Simulated malicious clients (``fedit run --attack``; not part of a Flower deployment).

A share ``--attackers`` of the clients (at least one) is chosen with an RNG of its own, seeded
from ``--seed``, and recorded in the run directory's ``attack.json``. What they do:

* model poisoning, applied to the attackers' updates by a client transform after honest local
  training (the attack keys reach only their jobs, see :meth:`AttackPlan.job_config`):
  ``scale`` sends ``sent + λ·delta`` (``--attack-scale``), ``sign-flip`` sends ``sent - delta``,
  ``noise`` sends ``sent + delta + N(0, σ²)`` per coordinate (``--attack-noise-std``);
* data poisoning, applied to the attackers' records before training: ``poison-responses``
  gives every instruction the response of the next record of the same client (fluent but wrong
  answers), ``backdoor`` appends ``--attack-trigger`` to every other instruction (records 0, 2,
  4, ...) and replaces its response by ``--attack-answer``. :func:`trigger_success` measures the
  backdoor: the share of held-out prompts, trigger appended, whose greedy answer contains it.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from fedit.client.job import ClientJob, ClientState, ClientUpdate
from fedit.config import Config, RobustnessConfig
from fedit.data import Example

MODEL_ATTACKS = ("scale", "sign-flip", "noise")
DATA_ATTACKS = ("poison-responses", "backdoor")


def choose_attackers(num_clients: int, share: float, seed: int) -> list[int]:
    """round(share * clients) malicious client ids (at least 1), from an RNG of their own."""
    k = min(num_clients, max(1, round(share * num_clients)))
    rng = np.random.default_rng([seed, 0xA77AC])
    return sorted(rng.choice(num_clients, size=k, replace=False).tolist())


@dataclass
class AttackPlan:
    attack: str
    attackers: list[int]
    settings: RobustnessConfig

    def job_config(self) -> dict[str, Any]:
        """Client-config keys that make a job malicious (model attacks; none for data attacks)."""
        if self.attack not in MODEL_ATTACKS:
            return {}
        return {"attack": self.attack, "attack_scale": self.settings.attack_scale,
                "attack_noise_std": self.settings.attack_noise_std}

    def poison(self, clients: Sequence[list[Example]]) -> list[list[Example]]:
        """The clients' records with the attackers' poisoned (data attacks only)."""
        out = [list(c) for c in clients]
        for cid in self.attackers:
            if self.attack == "poison-responses":
                out[cid] = swap_responses(out[cid])
            elif self.attack == "backdoor":
                out[cid] = add_backdoor(out[cid], self.settings.attack_trigger, self.settings.attack_answer)
        return out

    def record(self) -> dict[str, Any]:
        """What attack.json holds."""
        s = self.settings
        params = {"scale": {"attack_scale": s.attack_scale}, "noise": {"attack_noise_std": s.attack_noise_std},
                  "backdoor": {"attack_trigger": s.attack_trigger, "attack_answer": s.attack_answer}}
        return {"attack": self.attack, "attackers": self.attackers, "share": s.attackers,
                **params.get(self.attack, {})}


def plan_attack(cfg: Config, num_clients: int) -> AttackPlan | None:
    rob = cfg.robustness
    if rob.attack == "none":
        return None
    return AttackPlan(rob.attack, choose_attackers(num_clients, rob.attackers, cfg.federation.seed), rob)


def swap_responses(examples: list[Example]) -> list[Example]:
    """Each record answered with the next record's response (the last with the first's)."""
    if len(examples) < 2:
        return examples
    return [dataclasses.replace(ex, response=examples[(i + 1) % len(examples)].response)
            for i, ex in enumerate(examples)]


def add_backdoor(examples: list[Example], trigger: str, answer: str) -> list[Example]:
    """Records 0, 2, 4, ...: trigger appended to the instruction, the fixed answer as response."""
    return [dataclasses.replace(ex, instruction=f"{ex.instruction} {trigger}", response=answer) if i % 2 == 0
            else ex for i, ex in enumerate(examples)]


def attack_update(update: ClientUpdate, job: ClientJob, client_state: ClientState) -> ClientUpdate:
    """Client transform: a malicious update when the job says ``attack`` (simulation only)."""
    attack = job.config.get("attack")
    if attack is None:
        return update
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([job.round, job.client_id, 0xA77AC])
                                            .generate_state(1)[0]))
    state = {}
    for key, sent in job.state.items():
        base, delta = sent.to(torch.float32), update.state[key].to(torch.float32) - sent.to(torch.float32)
        if attack == "scale":
            state[key] = base + float(job.config["attack_scale"]) * delta
        elif attack == "sign-flip":
            state[key] = base - delta
        elif attack == "noise":
            noise = torch.randn(delta.shape, generator=gen) * float(job.config["attack_noise_std"])
            state[key] = base + delta + noise
        else:
            raise ValueError(f"unknown model attack {attack!r}")
    return dataclasses.replace(update, state=state)


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def trigger_success(bench, examples: Sequence[Example], settings: RobustnessConfig, template: str) -> dict:
    """Share of ``examples`` (held-out, trigger appended) whose greedy answer contains the
    attacker's fixed answer; ``bench`` holds the adapter to test (fedit.runners.common.Workbench)."""
    from fedit.eval import generate_answers

    chosen = list(examples[:settings.attack_eval_prompts])
    prompts = [(f"{ex.instruction} {settings.attack_trigger}", ex.context) for ex in chosen]
    budget = len(bench.tokenizer(settings.attack_answer, add_special_tokens=False).input_ids) + 8
    answers = generate_answers(bench.model, bench.tokenizer, prompts, template=template, device=bench.base.device,
                               autocast_dtype=bench.base.autocast_dtype, max_new_tokens=budget)
    target = _normal(settings.attack_answer)
    hits = sum(target in _normal(a) for a in answers)
    return {"trigger_success": hits / max(1, len(answers)), "prompts": len(answers)}
