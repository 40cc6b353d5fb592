"""Server side: client sampling, strategies (one per file) and pure aggregation functions."""

from fedit.server.aggregate import lora_product_gap, weighted_mean
from fedit.server.checks import check_update, filter_updates
from fedit.server.fedavg import FedAvg
from fedit.server.fedavgm import FedAvgM
from fedit.server.fedprox import FedProx
from fedit.server.sampling import ClientSampler
from fedit.server.strategy import Strategy

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (FedAvg, FedAvgM, FedProx)}


def make_strategy(name: str, *args, **kwargs) -> Strategy:
    """The strategy registered under ``name`` (names are validated by the config)."""
    return STRATEGIES[name](*args, **kwargs)


__all__ = ["STRATEGIES", "ClientSampler", "FedAvg", "FedAvgM", "FedProx", "Strategy", "check_update",
           "filter_updates", "lora_product_gap", "make_strategy", "weighted_mean"]
