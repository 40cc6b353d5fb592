"""factors: average A and B separately (the paper's FedAvg of LoRA). Not exact: mean(B) mean(A) !=
mean(B A); the round records the gap. Maths: fedit.server.lora_aggregate.mean_factors."""

from fedit.method_api import Capabilities, Lazy, Method

METHOD = Method("factors", "aggregation", "average A and B separately (the paper's rule; not exact)",
                order=8, capabilities=Capabilities(uneven_ranks_ok=False, exact=False),
                server=Lazy("fedit.server.lora_aggregate:factor_rule"))
