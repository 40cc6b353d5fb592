"""scale: the attackers send sent + λ·delta (--attack-scale)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.methods.attacks.common import ATTACK, MODEL_KEYS, Attackers, ModelAttack
from fedit.method_api import Method, option, require


@dataclass
class Options:
    attack_scale: float = option(10.0, "--attack scale: factor on the attackers' update delta", client=float)

    def __post_init__(self) -> None:
        require(0 < abs(self.attack_scale) < float("inf"), "attack_scale",
                f"must be a non-zero finite number, got {self.attack_scale}")


METHOD = Method("scale", "attack", "model poisoning: the attackers' delta scaled by --attack-scale",
                order=19, options=(Attackers, Options), capabilities=ATTACK, section="robustness",
                client=ModelAttack("scale"), client_keys=MODEL_KEYS)
