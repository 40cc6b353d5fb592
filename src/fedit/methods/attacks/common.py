"""What the simulated attacks share (fedit run only; docs/robustness.md): the attackers' share, and the
client half of the model-poisoning attacks (fedit.attacks.attack_update, run for the attack the job names)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.method_api import Capabilities, ClientKey, option, require

ATTACK = Capabilities(simulation_only=True)
MODEL_KEYS = {"attack": ClientKey(str, "simulation only: this client is malicious (scale, sign-flip, noise; "
                                       "fedit.attacks)")}


@dataclass
class Attackers:
    attackers: float = option(0.2, "--attack: share of the clients that are malicious")

    def __post_init__(self) -> None:
        require(0 < self.attackers < 1, "attackers", f"must be in (0, 1), got {self.attackers}")


class ModelAttack:
    """Client half of a model-poisoning attack: the malicious update when the job names this attack."""

    def __init__(self, name: str) -> None:
        self.name = name

    def transform(self, update: Any, job: Any, state: Any) -> Any:
        if job.config.get("attack") != self.name:
            return update
        from fedit.attacks import attack_update

        return attack_update(update, job, state)
