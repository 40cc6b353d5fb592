"""Two adapters at once on the resident model: the global one (peft's ``default``) and a client's local
adapter of the same layout (``fedit_local``), both active, so the LoRA layers add both outputs:
W x + s B_g A_g x + s B_l A_l x (dual personalization, FedDPA).

The pair is one rank-2r adapter: B = [B_g | B_l], A = [A_g ; A_l], with alpha doubled so that the scale
stays alpha / r; :func:`concat_state` and :func:`concat_config` write it as a plain PEFT folder
(fedit eval/export --client K load it with nothing of fedit's).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import peft
import torch

from fedit.model.client_adapters import DEFAULT, load_job_state
from fedit.model.lora import AdapterState, adapter_parameters

LOCAL = "fedit_local"
LOCAL_PREFIX = "local/"   # the local adapter's entries among the trained parameters (never sent)


def ensure_local(model: peft.PeftModel) -> str:
    """The local adapter (the global adapter's config), added on first use; the global stays active."""
    if LOCAL not in model.peft_config:
        with torch.random.fork_rng(), warnings.catch_warnings():  # its drawn init is overwritten before use
            warnings.simplefilter("ignore")
            model.add_adapter(LOCAL, model.peft_config[DEFAULT])
        model.set_adapter(DEFAULT)
    return LOCAL


@contextmanager
def dual_adapter(model: peft.PeftModel, global_state: AdapterState, local_state: AdapterState,
                 initial: AdapterState, *, train: bool = True) -> Iterator[dict[str, torch.nn.Parameter]]:
    """Both adapters loaded and active; yields the trainable parameters (the job's global keys, then
    the local adapter's under :data:`LOCAL_PREFIX`). Afterwards only the global adapter is active."""
    ensure_local(model)
    glob, local = adapter_parameters(model, DEFAULT), adapter_parameters(model, LOCAL)
    load_job_state(glob, global_state, initial)
    load_job_state(local, local_state, initial)
    model.base_model.set_adapter([DEFAULT, LOCAL])
    try:
        for key, param in glob.items():
            param.requires_grad_(train and key in global_state)
        for param in local.values():
            param.requires_grad_(train)
        named = {k: p for k, p in glob.items() if k in global_state}
        named.update({LOCAL_PREFIX + k: p for k, p in local.items()})
        yield named
    finally:
        model.set_adapter(DEFAULT)


def concat_state(global_state: Mapping[str, torch.Tensor], local_state: Mapping[str, torch.Tensor]) -> AdapterState:
    """The rank-2r adapter equal to global + local: A stacked by rows, B by columns."""
    return {k: torch.cat([v, local_state[k]], dim=1 if ".lora_B." in k else 0).contiguous()
            for k, v in global_state.items()}


def concat_config(config: Any) -> Any:
    """The peft config of :func:`concat_state`: rank and alpha doubled (the same scale alpha / r)."""
    out = copy.deepcopy(config)
    out.r, out.lora_alpha = 2 * config.r, 2 * config.lora_alpha
    return out
