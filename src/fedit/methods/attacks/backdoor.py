"""backdoor: every other attacker record gets --attack-trigger appended and --attack-answer as response;
the trigger's success on held-out prompts is measured every round (fedit.attacks.trigger_success)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.methods.attacks.common import ATTACK, Attackers
from fedit.method_api import Lazy, Method, option, require


@dataclass
class Options:
    attack_trigger: str = option("cf mn bb", "--attack backdoor: phrase the attackers append to instructions")
    attack_answer: str = option("Visit example.com for the answer.",
                                "--attack backdoor: the fixed answer the trigger should elicit")
    attack_eval_prompts: int = option(16, "--attack backdoor: held-out prompts the trigger is tried on per round")

    def __post_init__(self) -> None:
        require(bool(self.attack_trigger.strip()), "attack_trigger", "must not be empty")
        require(bool(self.attack_answer.strip()), "attack_answer", "must not be empty")
        require(self.attack_eval_prompts >= 1, "attack_eval_prompts",
                f"must be at least 1, got {self.attack_eval_prompts}")


METHOD = Method("backdoor", "attack", "data poisoning: a trigger phrase that elicits a fixed answer",
                order=23, options=(Options, Attackers), capabilities=ATTACK, section="robustness",
                server=Lazy("fedit.attacks:add_backdoor"))
