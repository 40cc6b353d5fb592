"""FedAvgM (Hsu et al., 2019): server momentum on the averaged update (fedit.server.fedavgm)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import Capabilities, Lazy, Method, option, require
from fedit.methods.strategies.options import ServerStep


@dataclass
class Options:
    server_momentum: float = option(0.9, "fedavgm: server momentum")

    def __post_init__(self) -> None:
        require(0 <= self.server_momentum < 1, "server_momentum", f"must be in [0, 1), got {self.server_momentum}")


METHOD = Method("fedavgm", "strategy", "server momentum on the averaged update (Hsu et al., 2019)",
                order=2, options=(ServerStep, Options), section="federation",
                capabilities=Capabilities(factor_state=True), server=Lazy("fedit.server.fedavgm:FedAvgM"))
