"""The options every personalization method shares: which one (``--personalization``) and, for
finetune, the local steps after the last round. Section ``personalization`` of config.yaml."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import option, require

CHOICES = ("none", "fedsa", "dual", "finetune")
CONFIG_KEY = "personalization"   # job.config: the run's personalization, for the client half


@dataclass
class PersonalOptions:
    personalization: str = option("none", "keep a personal part of the model at every client: fedsa (A shared, "
                                  "B kept local), dual (a global and a local adapter side by side), finetune "
                                  "(--personal-steps on the client's own data after the last round); "
                                  "docs/methods.md", CHOICES, client=str)
    personal_steps: int = option(20, "finetune: local optimizer steps on the final global adapter per client")

    def __post_init__(self) -> None:
        require(self.personal_steps >= 1, "personal_steps", f"must be at least 1, got {self.personal_steps}")
