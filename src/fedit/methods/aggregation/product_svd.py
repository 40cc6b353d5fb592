"""product-svd (FlexLoRA, Bai et al., 2024): the exact weighted mean of the clients' B A, re-factored
into the global rank by a truncated SVD. Maths: fedit.server.lora_aggregate.mean_products."""

from fedit.methods.aggregation.hetero import HeteroOptions
from fedit.method_api import Capabilities, Lazy, Method

METHOD = Method("product-svd", "aggregation", "FlexLoRA: exact mean of B*A, re-factored by a truncated SVD",
                order=11, options=(HeteroOptions,), section="lora",
                capabilities=Capabilities(needs_each_update=True, refactors=True, exact=True),
                server=Lazy("fedit.server.lora_aggregate:product_rule"))
