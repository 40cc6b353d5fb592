"""Options shared by several strategies (one definition each: fedavgm, scaffold and the adaptive
optimizers all step by --server-lr). Their flags live in the ``federation`` section."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import option, require

# --server-lr when it is not given: a strategy declares its own in Method.defaults (the adaptive
# optimizers: 1e-3, see fedit.methods.strategies.fedadam), else fedit.sections.SERVER_LR.


@dataclass
class ServerStep:
    server_lr: float | None = option(None, "server learning rate of fedavgm, scaffold and the adaptive optimizers; "
                                     "unset: 0.001 for fedadam, fedyogi, fedadagrad, 1.0 for the others")

    def __post_init__(self) -> None:
        require(self.server_lr is None or self.server_lr > 0, "server_lr", f"must be positive, got {self.server_lr}")


@dataclass
class AdaptiveMoments:
    server_beta1: float = option(0.9, "fedadam, fedyogi, fedadagrad: decay of the server's first moment "
                                 "(momentum of the pseudo-gradient; 0 turns it off)")
    server_beta2: float = option(0.99, "fedadam, fedyogi: decay of the server's second moment")
    server_tau: float = option(1e-3, "fedadam, fedyogi, fedadagrad: adaptivity (added to sqrt(v); the "
                               "moments start at v = tau^2)")

    def __post_init__(self) -> None:
        for name in ("server_beta1", "server_beta2"):
            require(0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}")
        require(self.server_tau > 0, "server_tau", f"must be positive, got {self.server_tau}")
