"""dual (FedDPA, Yang et al., NeurIPS 2024): a global adapter, aggregated as usual, and a local adapter
of the same layout, never sent, trained together (their outputs add). Client half:
fedit.client.personal and fedit.model.dual."""

from fedit.method_api import Capabilities, Lazy, Method
from fedit.methods.personalization.options import PersonalOptions

METHOD = Method("dual", "personalization", "a global adapter (aggregated) and a local adapter (never sent) "
                "trained together (Yang et al., 2024)", order=2, options=(PersonalOptions,),
                section="personalization", capabilities=Capabilities(client_state=True),
                active=lambda cfg: cfg.personalization.personalization == "dual",
                flags=lambda cfg: "--personalization dual",
                server=Lazy("fedit.server.personal:wrap"), client=Lazy("fedit.client.personal:Dual"))
