"""What one client's local round is, for the step loop (fedit.client.trainer) and its engines.

A :class:`ClientRun` is one client's round as the loop takes it: the adapter it starts from, its
tokenized records, its training settings and what a method adds (gradient corrections, a per-step
learning rate). Everything random in a run (data order, LoRA dropout) derives from
:func:`client_seed`, so the simulation and a Flower ClientApp produce the same update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from fedit.config import TrainConfig
from fedit.data.prompts import TokenizedExample

# Called after the backward passes of every optimizer step, before clipping: adds a method's
# term to the LoRA gradients ({wire key: parameter}).
Correction = Callable[[Mapping[str, torch.nn.Parameter]], None]
StepCallback = Callable[[int, int, float], None]  # (step, total_steps, loss)
LrAtStep = Callable[[int, int], float]            # (step, total_steps) -> learning rate
Lora = tuple[int | None, str]                     # (rank, targets) of a client's own adapter


@dataclass
class ClientRun:
    """One client's local round."""

    client_id: int
    round_idx: int
    state: dict[str, torch.Tensor]          # the global adapter it starts from (the keys it trains)
    examples: Sequence[TokenizedExample]
    cfg: TrainConfig
    corrections: Sequence[Correction] = ()
    on_step: StepCallback | None = None
    lr_at_step: LrAtStep | None = None      # None: cfg.lr at every step
    lora: Lora | None = None                # the client's own adapter; None: the global one
    local: dict[str, torch.Tensor] | None = None  # dual: a local adapter trained beside the global one


@dataclass
class StepInfo:
    """The optimizer step just taken (``LocalTrainer.last_step``, read by step callbacks that log)."""

    step: int = 0
    total: int = 0
    loss: float = float("nan")
    lr: float = float("nan")
    input_tokens: int = 0       # non-padding tokens of the step's forward passes
    seconds: float = 0.0


def client_seed(seed: int, round_idx: int, client_id: int) -> int:
    """A 63-bit seed that depends only on (seed, round, client)."""
    return int(np.random.SeedSequence([seed, round_idx, client_id]).generate_state(2, np.uint64)[0] >> 1)
