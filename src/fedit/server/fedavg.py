"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' adapters."""

from __future__ import annotations

from fedit.server.strategy import Strategy


class FedAvg(Strategy):
    """The base strategy's configure/aggregate are exactly FedAvg."""

    name = "fedavg"
