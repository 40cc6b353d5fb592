"""Server side: client sampling, strategies (one per file), wrappers and pure aggregation functions."""

from fedit.server.aggregate import lora_product_gap, weighted_mean
from fedit.server.build import build_strategy, check_methods, make_strategy, strategy_class
from fedit.server.checks import check_update, filter_updates
from fedit.server.fedadagrad import FedAdagrad
from fedit.server.fedadam import FedAdam
from fedit.server.fedavg import FedAvg
from fedit.server.fedavgm import FedAvgM
from fedit.server.fedopt import FedOpt
from fedit.server.fedprox import FedProx
from fedit.server.lora_aggregate import aggregate_lora, client_view
from fedit.server.fedyogi import FedYogi
from fedit.server.sampling import ClientSampler
from fedit.server.scaffold import Scaffold
from fedit.server.strategy import Strategy, StrategyWrapper

__all__ = ["ClientSampler", "FedAdagrad", "FedAdam", "FedAvg", "FedAvgM", "FedOpt", "FedProx", "FedYogi", "Scaffold",
           "Strategy", "StrategyWrapper", "aggregate_lora", "build_strategy", "check_methods", "check_update",
           "client_view", "filter_updates", "lora_product_gap", "make_strategy", "strategy_class", "weighted_mean"]
