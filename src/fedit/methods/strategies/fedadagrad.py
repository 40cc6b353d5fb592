"""FedAdagrad (Reddi et al., 2021): Adagrad's summed second moment on the server's pseudo-gradient.
The shared maths is fedit.server.fedopt."""

from fedit.method_api import Capabilities, Lazy, Method
from fedit.methods.strategies.options import AdaptiveMoments, ServerStep

METHOD = Method("fedadagrad", "strategy",
                "Adagrad's summed second moment on the server's pseudo-gradient (Reddi et al., 2021)",
                order=6, options=(ServerStep, AdaptiveMoments), section="federation",
                capabilities=Capabilities(factor_state=True), server=Lazy("fedit.server.fedadagrad:FedAdagrad"),
                defaults={"server_lr": 1e-3})
