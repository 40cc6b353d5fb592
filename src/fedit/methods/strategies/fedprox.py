"""FedProx (Li et al., 2020): FedAvg aggregation; each client adds mu/2 * ||w - w_global||^2 to its
loss. Server half: fedit.server.fedprox (puts ``proximal_mu`` in every job); client half below."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.method_api import Lazy, Method, option, require


@dataclass
class Options:
    proximal_mu: float = option(0.01, "fedprox: weight of the proximal term mu/2*||w - w_global||^2", client=float)

    def __post_init__(self) -> None:
        require(self.proximal_mu >= 0, "proximal_mu", f"must be >= 0, got {self.proximal_mu}")


class Client:
    """The gradient of mu/2 * ||w - w_global||^2, i.e. mu * (w - w_global), added every step."""

    @staticmethod
    def correction(job: Any, device: Any, state: Any) -> Any:
        from fedit.client.job import proximal_correction

        return proximal_correction(job, device, state)


METHOD = Method("fedprox", "strategy", "FedAvg with a proximal term on the clients' loss (Li et al., 2020)",
                order=3, options=(Options,), section="train", server=Lazy("fedit.server.fedprox:FedProx"),
                client=Client())
