"""fedsa (FedSA-LoRA, Guo et al., ICLR 2025): A is shared and aggregated, each client's B stays at the
client. Client half: fedit.client.personal (B in the client state, never in the reply); server half:
fedit.server.personal (the aggregate keeps the global B, the seeded init)."""

from fedit.method_api import Capabilities, Lazy, Method
from fedit.methods.personalization.options import PersonalOptions

METHOD = Method("fedsa", "personalization", "A shared and aggregated, each client's B kept at the client "
                "(Guo et al., 2025)", order=1, options=(PersonalOptions,), section="personalization",
                capabilities=Capabilities(client_state=True, partial_adapter=True),
                active=lambda cfg: cfg.personalization.personalization == "fedsa",
                flags=lambda cfg: "--personalization fedsa",
                server=Lazy("fedit.server.personal:wrap"), client=Lazy("fedit.client.personal:FedSA"))
