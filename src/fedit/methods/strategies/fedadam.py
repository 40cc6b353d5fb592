"""FedAdam (Reddi et al., 2021): Adam's second moment on the server's pseudo-gradient.
The shared maths is fedit.server.fedopt."""

from fedit.method_api import Capabilities, Lazy, Method
from fedit.methods.strategies.options import AdaptiveMoments, ServerStep

METHOD = Method("fedadam", "strategy",
                "Adam's second moment on the server's pseudo-gradient (Reddi et al., 2021)",
                order=4, options=(ServerStep, AdaptiveMoments), section="federation",
                capabilities=Capabilities(factor_state=True), server=Lazy("fedit.server.fedadam:FedAdam"),
                defaults={"server_lr": 1e-3})
