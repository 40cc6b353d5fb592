"""finetune: federate as usual, then every client trains --personal-steps more steps of the final global
adapter on its own data (the plain personalization baseline). Nothing changes during the rounds; the
personal adapters are made at the end (fedit.runners.personal)."""

from fedit.method_api import Capabilities, Method
from fedit.methods.personalization.options import PersonalOptions

METHOD = Method("finetune", "personalization", "federate, then --personal-steps local steps per client on "
                "the final global adapter", order=3, options=(PersonalOptions,), section="personalization",
                capabilities=Capabilities(),
                active=lambda cfg: cfg.personalization.personalization == "finetune",
                flags=lambda cfg: "--personalization finetune")
