"""Personalization on the client: the part of the model that is the client's own and never leaves it.

Both methods keep their personal tensors in the client state (the simulation keeps and checkpoints it
per client, a Flower node in its context), read ``personalization`` from the job's client config and
do nothing without it:

- fedsa (FedSA-LoRA): the job carries A only; before training the client adds its own B
  (:data:`FEDSA_B`; before its first round, the seeded init) to what it trains; the reply carries A
  only and the trained B goes back into the state.
- dual (FedDPA): a local adapter of the global adapter's layout (:data:`DUAL_LOCAL`, first drawn from
  a per-client seed: A kaiming-uniform as peft's init, B zero) is trained together with the global
  one (their outputs add: fedit.model.dual); its tensors come back from training under
  :data:`LOCAL_PREFIX` keys and are taken out of the reply into the state.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedit.model import AdapterState
from fedit.model.dual import LOCAL_PREFIX

if TYPE_CHECKING:  # fedit.client.job imports this module through the registry
    from fedit.client.job import ClientJob, ClientUpdate
    from fedit.client.runs import ClientRun

CONFIG_KEY = "personalization"
FEDSA_B = "fedsa_b"          # client state: the client's own LoRA B
DUAL_LOCAL = "dual_local"    # client state: the client's local adapter


def is_b(key: str) -> bool:
    return ".lora_B." in key


def _mode(job: ClientJob) -> str:
    return str(job.config.get(CONFIG_KEY, "none"))


class FedSA:
    """The client half of fedit.methods.personalization.fedsa."""

    @staticmethod
    def prepare(run: ClientRun, job: ClientJob, state: dict[str, Any], seed: int,
                initial: AdapterState) -> ClientRun:
        if _mode(job) != "fedsa":
            return run
        own = state.get(FEDSA_B) or {}
        b_keys = [k.replace(".lora_A.", ".lora_B.") for k in run.state if ".lora_A." in k]
        return dataclasses.replace(run, state={**run.state, **{k: own[k] if k in own else initial[k] for k in b_keys}})

    @staticmethod
    def transform(update: ClientUpdate, job: ClientJob, state: dict[str, Any]) -> ClientUpdate:
        if _mode(job) != "fedsa":
            return update
        state[FEDSA_B] = {k: v.clone() for k, v in update.state.items() if is_b(k)}
        return dataclasses.replace(update, state={k: v for k, v in update.state.items() if not is_b(k)})


def initial_local(global_state: AdapterState, seed: int, client_id: int) -> AdapterState:
    """A local adapter of the global adapter's shapes: A ~ U(-1/sqrt(in), 1/sqrt(in)) (peft's
    kaiming-uniform with a = sqrt(5)) from a per-client seed, B = 0."""
    gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 5, client_id]).generate_state(1)[0]))
    out = {}
    for key in sorted(global_state):
        shape = global_state[key].shape
        if is_b(key):
            out[key] = torch.zeros(shape)
        else:
            bound = 1.0 / math.sqrt(shape[-1])
            out[key] = (torch.rand(shape, generator=gen) * 2 - 1) * bound
    return out


class Dual:
    """The client half of fedit.methods.personalization.dual."""

    @staticmethod
    def prepare(run: ClientRun, job: ClientJob, state: dict[str, Any], seed: int,
                initial: AdapterState) -> ClientRun:
        if _mode(job) != "dual":
            return run
        local = state.get(DUAL_LOCAL) or initial_local(job.state, seed, job.client_id)
        return dataclasses.replace(run, local=local)

    @staticmethod
    def transform(update: ClientUpdate, job: ClientJob, state: dict[str, Any]) -> ClientUpdate:
        if _mode(job) != "dual":
            return update
        n = len(LOCAL_PREFIX)
        state[DUAL_LOCAL] = {k[n:]: v.clone() for k, v in update.state.items() if k.startswith(LOCAL_PREFIX)}
        return dataclasses.replace(update, state={k: v for k, v in update.state.items()
                                                  if not k.startswith(LOCAL_PREFIX)})
