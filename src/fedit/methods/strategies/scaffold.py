"""SCAFFOLD (Karimireddy et al., 2020): control variates that correct each client's drift.
Server half: fedit.server.scaffold; client half (the correction and the variates): fedit.client.scaffold."""

from __future__ import annotations

from typing import Any

from fedit.method_api import Capabilities, ClientKey, Lazy, Method
from fedit.methods.strategies.options import ServerStep


class Client:
    """Corrects every step's gradient by c - c_i, then sends delta_c_i beside the update."""

    @staticmethod
    def correction(job: Any, device: Any, state: Any) -> Any:
        from fedit.client.scaffold import scaffold_correction

        return scaffold_correction(job, device, state)

    @staticmethod
    def transform(update: Any, job: Any, state: Any) -> Any:
        from fedit.client.scaffold import scaffold_variates

        return scaffold_variates(update, job, state)


METHOD = Method(
    "scaffold", "strategy", "control variates correct each client's drift (Karimireddy et al., 2020)",
    order=7, options=(ServerStep,), section="federation",
    # the control-variate deltas travel beside each update, outside what DP or SecAgg+ release
    capabilities=Capabilities(needs_each_update=True, factor_state=True, needs_full_adapter=True, client_state=True,
                              side_aggregates=("scaffold_dc",)),
    server=Lazy("fedit.server.scaffold:Scaffold"), client=Client(),
    client_keys={"scaffold": ClientKey(bool, "SCAFFOLD: correct every step's gradient by c - c_i (c in the job's "
                                       "'scaffold_c' array, c_i in the client state) and send the variate delta back")})
