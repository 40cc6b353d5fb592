"""Canaries for the privacy audit (``fedit run --audit-canaries K``, read by ``fedit audit``).

Random secret records (Carlini et al., "The Secret Sharer", USENIX Security 2019) inserted into
chosen clients' data before training; as many again are drawn but never inserted, as the membership
test's non-members. The data side is fedit.privacy.canaries; fedit run only (a Flower node's data is
its own)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import Capabilities, Method, option, require


@dataclass
class Options:
    audit_canaries: int = option(0, "privacy audit: insert this many random secret canary records into chosen "
                                 "clients' data before training (fedit run only; 0: none); `fedit audit` measures "
                                 "their exposure and an empirical epsilon lower bound")
    audit_repeats: int = option(1, "privacy audit: how many times each canary is inserted")

    def __post_init__(self) -> None:
        require(self.audit_canaries >= 0, "audit_canaries", f"must be >= 0, got {self.audit_canaries}")
        require(self.audit_repeats >= 1, "audit_repeats", f"must be at least 1, got {self.audit_repeats}")


METHOD = Method("canaries", "privacy", "privacy audit: secret canary records inserted into clients' data",
                order=14, options=(Options,), section="privacy", capabilities=Capabilities(simulation_only=True),
                active=lambda cfg: cfg.privacy.audit_canaries > 0, flags=lambda cfg: "--audit-canaries")
