"""The one interface between the local step loop (fedit.client.trainer) and how a pass is computed.

The loop owns everything an optimizer step is made of: the step plan, AdamW, the per-step
learning rate, the corrections, gradient clipping and the metrics. An engine owns only the model
side: which parameters a run trains while it trains (:meth:`Engine.open`) and one forward/backward
pass over the next micro-batch of one or more runs (:meth:`Engine.backward`). Two engines exist:
``peft`` (peft's own LoRA layers on padded micro-batches, any model) and ``fused`` (packed
sequences and fused LoRA projections, several clients per pass, supported model families only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Sequence

import torch

from fedit.client.runs import ClientRun
from fedit.data.prompts import TokenizedExample

Params = dict[str, torch.nn.Parameter]   # wire key -> the parameter a run trains


@dataclass
class Slice:
    """One run's part of a pass: its next micro-batch."""

    run: int                                   # the run's index in the runs given to ``open``
    examples: Sequence[TokenizedExample]
    denominator: int                           # loss tokens of the run's whole optimizer step
    position: int                              # examples of the run's plan before this micro-batch


@dataclass
class Computed:
    """What one slice of a pass computed."""

    loss_sum: float     # summed token losses of the micro-batch
    tokens: int         # non-padding input tokens
    padded: int         # input tokens the forward ran over (padding included)


class Engine(ABC):
    """How the model computes a pass. ``together``: several runs can share one pass."""

    name: str
    together: bool

    @abstractmethod
    def why_not(self, run: ClientRun) -> str | None:
        """Why this engine cannot train ``run`` exactly, or None when it can."""

    @abstractmethod
    def open(self, runs: Sequence[ClientRun], seeds: Sequence[int]) -> AbstractContextManager[list[Params]]:
        """While open: the model in training mode, each run's trainable parameters (loaded with
        its ``state``) and the engine's randomness (from each run's client seed) ready."""

    @abstractmethod
    def backward(self, slices: Sequence[Slice]) -> list[Computed]:
        """Forward and backward over the slices' micro-batches (at most one per run): every run's
        parameters receive the gradient of its loss sum / its step denominator."""
