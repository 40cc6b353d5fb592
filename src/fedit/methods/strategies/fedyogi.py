"""FedYogi (Reddi et al., 2021): Yogi's additive second moment on the server's pseudo-gradient.
The shared maths is fedit.server.fedopt."""

from fedit.method_api import Capabilities, Lazy, Method
from fedit.methods.strategies.options import AdaptiveMoments, ServerStep

METHOD = Method("fedyogi", "strategy",
                "Yogi's additive second moment on the server's pseudo-gradient (Reddi et al., 2021)",
                order=5, options=(ServerStep, AdaptiveMoments), section="federation",
                capabilities=Capabilities(factor_state=True), server=Lazy("fedit.server.fedyogi:FedYogi"),
                defaults={"server_lr": 1e-3})
