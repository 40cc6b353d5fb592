"""One seed of an experiment: its run config, data split, systems and initial adapter.

``fedit experiment --seeds S`` repeats every trained system with the training seeds --seed,
--seed+1, ..., --seed+S-1 (client sampling, LoRA initialisation, batch order). The data split
(partition, client and test subsamples: ``--data-seed``, default --seed) stays the first seed's,
so every seed scores the same test records; ``--vary-partition`` draws it anew per seed too.
The first seed's config is the experiment's own, unchanged, so a single-seed experiment made
before seeds existed is reused as it is; later seeds live under ``systems/seed-N/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from fedit.config import Config
from fedit.data import Example
from fedit.data.prompts import TokenizedExample
from fedit.model import AdapterState
from fedit.runners.common import data_seed
from fedit.experiment.systems import SystemSpec


@dataclass
class SeedPlan:
    index: int                        # 0 for the first seed
    cfg: Config                       # this seed's run config (--seed, --data-seed)
    clients: list[list[Example]]
    test: list[Example]
    client_tok: list[list[TokenizedExample]]
    test_tok: list[TokenizedExample]
    local_clients: list[int]
    specs: list[SystemSpec]
    gen_idx: list[int]
    initial_state: AdapterState

    @property
    def seed(self) -> int:
        return self.cfg.federation.seed

    def folder(self, out: Path) -> Path:
        """Where this seed's systems live: ``systems/`` for the first seed, ``systems/seed-N/`` after."""
        return out / "systems" if self.index == 0 else out / "systems" / f"seed-{self.seed}"


def seed_config(cfg: Config, index: int, vary_partition: bool, data_seed: int) -> Config:
    """The run config of seed ``index``: the experiment's own for index 0; else --seed + index and
    the data split of ``data_seed`` (``+ index`` with --vary-partition)."""
    if index == 0:
        return cfg
    return cfg.override({"seed": cfg.federation.seed + index,
                         "data_seed": data_seed + index if vary_partition else data_seed})


def seeded_initial_state(reference: AdapterState, seed: int) -> AdapterState:
    """A fresh LoRA initialisation drawn from ``seed`` (peft's default: A ~ U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), i.e. kaiming-uniform with a = sqrt(5); B = 0), keys and shapes of ``reference``.
    Its own generator: the global RNG is not touched."""
    gen = torch.Generator().manual_seed(seed)
    out: AdapterState = {}
    for key in sorted(reference):
        t = reference[key]
        if "lora_A" in key:
            bound = 1.0 / math.sqrt(t.shape[1])
            out[key] = torch.empty(t.shape, dtype=torch.float32).uniform_(-bound, bound, generator=gen)
        elif "lora_B" in key:
            out[key] = torch.zeros(t.shape, dtype=torch.float32)
        else:
            out[key] = t.clone()
    return out


def split_owners(plans: Sequence[SeedPlan]) -> list[int]:
    """Indices of the seeds that draw a data split of their own (only the first, unless
    --vary-partition): the untuned base model, the same under every training seed, is evaluated
    once per data split."""
    seen, out = set(), []
    for p in plans:
        if data_seed(p.cfg) not in seen:
            seen.add(data_seed(p.cfg))
            out.append(p.index)
    return out
