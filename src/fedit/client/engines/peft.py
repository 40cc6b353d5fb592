"""The peft engine: peft's own LoRA layers on padded micro-batches; any model, one run at a time.

A run trains the resident model's adapter in place (its own peft adapter when the client has a
rank or targets of its own, fedit.model.client_adapters). LoRA dropout draws from torch's RNG,
seeded with the client seed inside a fork, so the global RNG is left as it was.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch

from fedit.client.batching import collate
from fedit.client.engines.base import Computed, Engine, Params, Slice
from fedit.client.loss import token_losses
from fedit.client.runs import ClientRun
from fedit.model import AdapterState, autocast, client_adapter
from fedit.model.dual import dual_adapter


class PeftEngine(Engine):
    name = "peft"
    together = False

    def __init__(self, model: torch.nn.Module, device: torch.device, autocast_dtype: torch.dtype | None,
                 pad_id: int, initial_state: AdapterState) -> None:
        self.model, self.device, self.autocast_dtype = model, device, autocast_dtype
        self.pad_id, self.initial_state = pad_id, initial_state

    def why_not(self, run: ClientRun) -> str | None:
        return None

    @contextmanager
    def open(self, runs: Sequence[ClientRun], seeds: Sequence[int]) -> Iterator[list[Params]]:
        (run,), (seed,) = runs, seeds
        with ExitStack() as stack:
            if run.local is not None:  # dual: the global and the local adapter, both trained
                named = stack.enter_context(dual_adapter(self.model, run.state, run.local, self.initial_state))
            else:
                named = stack.enter_context(client_adapter(self.model, run.lora, run.state, self.initial_state))
            self.model.train()
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                yield [named]
            self.model.eval()

    def backward(self, slices: Sequence[Slice]) -> list[Computed]:
        (part,) = slices
        batch = {k: v.to(self.device, non_blocking=True) for k, v in collate(part.examples, self.pad_id).items()}
        with autocast(self.device, self.autocast_dtype):
            loss_sum = token_losses(self.model, batch)[0].sum()
        (loss_sum / part.denominator).backward()
        return [Computed(loss_sum.item(), int(batch["attention_mask"].sum()), batch["input_ids"].numel())]
