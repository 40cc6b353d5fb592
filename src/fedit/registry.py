"""The one registry of federated methods: strategy names and server-side wrappers, by import path.

Torch-free on purpose: ``fedit.config`` takes its ``--strategy`` choices from here and the CLI
builds ``--help`` from the config, so listing the methods must not import torch. Adding a
method is one file and one line here; ``fedit.server.build`` turns a run's config into the
strategy object (explicit keyword arguments, matched by name to config fields) and applies the
wrappers in the order listed.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class" of a fedit.server.strategy.Strategy subclass
STRATEGIES: dict[str, str] = {
    "fedavg": "fedit.server.fedavg:FedAvg",
    "fedavgm": "fedit.server.fedavgm:FedAvgM",
    "fedprox": "fedit.server.fedprox:FedProx",
    "fedadam": "fedit.server.fedadam:FedAdam",
    "fedyogi": "fedit.server.fedyogi:FedYogi",
    "fedadagrad": "fedit.server.fedadagrad:FedAdagrad",
    "scaffold": "fedit.server.scaffold:Scaffold",
}

# Server-side wrappers, applied innermost first: name -> "module:function". Each function has the
# signature ``wrap(strategy, cfg) -> Strategy`` and returns ``strategy`` unchanged when the run's
# config does not ask for it (see fedit.server.wrappers).
WRAPPERS: dict[str, str] = {
    "dp": "fedit.privacy.dp_strategy:wrap",            # DP-FedAvg (--dp-clip): noise on the sum, accountant
    "lr_schedule": "fedit.server.scheduled:wrap",   # --lr-schedule / --warmup-steps across the federation
    "robust": "fedit.server.defences:wrap",        # --robust: median, trimmed-mean, krum, multi-krum, norm-bound
    "compress": "fedit.comm.compress:wrap",        # --compress: asks for coded updates, decodes them (receive)
}

# Client-side transforms of an update, applied in this order after local training:
# name -> "module:function" with the signature ``transform(update, job, client_state) -> update``;
# each reads its own keys of the job's client config and returns the update unchanged without them.
CLIENT_TRANSFORMS: dict[str, str] = {
    "scaffold": "fedit.client.scaffold:scaffold_variates",   # SCAFFOLD: c_i+ and delta_c_i after training
    "dp": "fedit.privacy.dp:dp_client_transform",      # DP-FedAvg: clip the update (+ local noise)
    "attack": "fedit.attacks:attack_update",       # simulation only: a malicious client's update (after DP:
                                                   # an attacker does not clip honestly; the server re-clips)
    "compress": "fedit.comm.compress:compress_update",  # last: what leaves the client is what is coded
}


def load(path: str) -> Any:
    """The object a ``module:attribute`` path names."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)
