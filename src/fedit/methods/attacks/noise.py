"""noise: the attackers send sent + delta + N(0, σ²) per coordinate (--attack-noise-std)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.methods.attacks.common import ATTACK, MODEL_KEYS, Attackers, ModelAttack
from fedit.method_api import Method, option, require


@dataclass
class Options:
    attack_noise_std: float = option(0.01, "--attack noise: std of the Gaussian noise added to every coordinate",
                                     client=float)

    def __post_init__(self) -> None:
        require(0 < self.attack_noise_std < float("inf"), "attack_noise_std",
                f"must be positive, got {self.attack_noise_std}")


METHOD = Method("noise", "attack", "model poisoning: Gaussian noise on every coordinate of the attackers' update",
                order=21, options=(Attackers, Options), capabilities=ATTACK, section="robustness",
                client=ModelAttack("noise"), client_keys=MODEL_KEYS)
