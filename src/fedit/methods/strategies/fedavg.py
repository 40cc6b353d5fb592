"""FedAvg (McMahan et al., 2017): the example-weighted mean of the clients' adapters."""

from fedit.method_api import Lazy, Method

METHOD = Method("fedavg", "strategy", "example-weighted mean of the clients' adapters (McMahan et al., 2017)",
                order=1, server=Lazy("fedit.server.fedavg:FedAvg"))
