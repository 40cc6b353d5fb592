"""ffa (FFA-LoRA, Sun et al., 2024): A frozen at its seeded init, only B trained and sent: the mean of
the B's times the shared A is the exact mean of the products. Maths: fedit.server.lora_aggregate."""

from fedit.methods.aggregation.hetero import HeteroOptions
from fedit.method_api import Capabilities, Lazy, Method

METHOD = Method("ffa", "aggregation", "A frozen at its seeded init, only B trained and sent (exact)",
                order=10, options=(HeteroOptions,), section="lora",
                capabilities=Capabilities(partial_adapter=True, exact=True),
                server=Lazy("fedit.server.lora_aggregate:factor_rule"))
