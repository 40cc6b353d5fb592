"""Poisson client sampling (``--client-sampling poisson``): each client joins a round independently
with probability q = clients per round / clients, so a round has a varying number of clients,
possibly none. With DP-FedAvg it is what the add/remove accounting assumes (fedit.privacy.accounting);
without DP it is just another sampler. Server half: fedit.privacy.poisson (the sampler swap)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import Capabilities, Lazy, Method, option

SAMPLINGS = ("fixed", "poisson")


@dataclass
class Options:
    client_sampling: str = option("fixed", "how clients are sampled each round: fixed (exactly --clients-per-round "
                                  "of them, without replacement) or poisson (each joins independently with "
                                  "probability clients-per-round / clients; a round may have none)", SAMPLINGS)


METHOD = Method("poisson-sampling", "privacy", "Poisson client sampling: a varying cohort, add/remove DP accounting",
                order=11, options=(Options,), section="federation", capabilities=Capabilities(),
                server=Lazy("fedit.privacy.poisson:wrap"),
                active=lambda cfg: cfg.federation.client_sampling == "poisson",
                flags=lambda cfg: "--client-sampling poisson")
