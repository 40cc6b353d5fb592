"""zero-pad (HetLoRA, Cho et al., 2024): factors of lower-rank clients padded with zeros to the global
rank, then averaged. Maths: fedit.server.lora_aggregate.mean_factors."""

from fedit.methods.aggregation.hetero import HeteroOptions
from fedit.method_api import Capabilities, Lazy, Method

METHOD = Method("zero-pad", "aggregation", "HetLoRA: pad lower ranks with zeros, then average the factors",
                order=9, options=(HeteroOptions,), section="lora", capabilities=Capabilities(exact=False),
                server=Lazy("fedit.server.lora_aggregate:factor_rule"))
