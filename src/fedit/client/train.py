"""The client update: global adapter + the client's records -> new adapter, n_examples, metrics.

The base model stays resident; only the LoRA parameters are overwritten with the global
adapter before training and read out after. Everything random in a client's round (data
order, LoRA dropout) derives from (seed, round, client id), so the simulation and the Flower
ClientApp produce the same update for the same client.

:class:`LocalTrainer` picks the engine of each set of runs (``--lora-kernel``) and hands them to
the one step loop, :func:`fedit.client.trainer.train_runs`.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

from fedit.client.engines.base import Engine
from fedit.client.engines.fused import FusedEngine, why_unsupported
from fedit.client.engines.peft import PeftEngine
from fedit.client.job import ClientUpdate
from fedit.client.runs import ClientRun, Correction, Lora, LrAtStep, StepCallback, StepInfo, client_seed
from fedit.client.trainer import train_runs
from fedit.config import TrainConfig
from fedit.data.prompts import TokenizedExample
from fedit.errors import ConfigError
from fedit.model import AdapterState, get_adapter_state, set_adapter_state

__all__ = ["LocalTrainer", "StepInfo", "client_seed", "resolve_lora_kernel"]

logger = logging.getLogger(__name__)


def resolve_lora_kernel(spec: str, model: torch.nn.Module) -> str:
    """``--lora-kernel auto|fused|peft`` -> ``fused`` or ``peft`` for this model."""
    if spec == "peft":
        return "peft"
    reason = why_unsupported(model)
    if reason is None:
        return "fused"
    if spec == "fused":
        raise ConfigError(f"--lora-kernel fused: not supported for this model ({reason}); use auto or peft")
    logger.info("LoRA kernel: peft (fused not supported: %s)", reason)
    return "peft"


class LocalTrainer:
    """Trains the LoRA parameters of one resident PEFT model for one or more clients at a time.

    ``initial_state``: the global adapter's seeded initialisation (default: the model's adapter
    now), the value of every entry a job does not carry (A under ffa; see
    fedit.model.client_adapters).

    ``lora_kernel`` (``--lora-kernel``): ``peft`` runs PEFT's own layers on padded micro-batches;
    ``fused`` runs packed sequences through fused LoRA, several clients per pass
    (fedit.client.engines.fused); ``auto`` picks ``fused`` where it supports the model. A run the
    fused engine cannot train exactly runs on peft, said once per reason. See docs/performance.md.
    """

    def __init__(self, model: torch.nn.Module, *, device: torch.device,
                 autocast_dtype: torch.dtype | None, pad_id: int, initial_state: AdapterState | None = None,
                 lora_kernel: str = "peft") -> None:
        self.model = model
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.pad_id = pad_id
        self.initial_state = get_adapter_state(model) if initial_state is None else initial_state
        self.last_step = StepInfo()
        self.lora_kernel = resolve_lora_kernel(lora_kernel, model)
        self.peft = PeftEngine(model, device, autocast_dtype, pad_id, self.initial_state)
        self.fused = FusedEngine(model, device, autocast_dtype)
        self._warned: set[str] = set()

    def train(self, runs: Sequence[ClientRun], *, seed: int) -> list[ClientUpdate]:
        """One update per run, in order: in shared passes when the engine takes every run together,
        else one run after another (each on the engine it can use)."""
        engine = self.engine_for(runs)
        if len(runs) > 1 and not engine.together:
            return [update for run in runs for update in self.train([run], seed=seed)]
        updates = train_runs(engine, runs, seed=seed, record=self._record)
        if engine is self.fused and len(updates) == 1:
            set_adapter_state(self.model, updates[0].state)  # the model holds the client's adapter, as with peft
        return updates

    def fit(self, global_state: AdapterState, examples: Sequence[TokenizedExample], cfg: TrainConfig,
            *, seed: int, round_idx: int, client_id: int, corrections: Sequence[Correction] = (),
            on_step: StepCallback | None = None, lora: Lora | None = None,
            lr_at_step: LrAtStep | None = None) -> ClientUpdate:
        """Run one local round and return the client's update.

        ``global_state`` is what the job carries: the client trains exactly those entries.
        ``lora``: (rank, targets) of the client's own adapter (None: the global adapter).
        ``corrections`` add a method's term to the gradients of every step before clipping
        (FedProx's proximal term, SCAFFOLD's control variates; see fedit.client.job).
        ``lr_at_step`` sets the learning rate of every step (a per-step schedule); else ``cfg.lr``.
        """
        run = ClientRun(client_id, round_idx, global_state, examples, cfg, corrections, on_step, lr_at_step, lora)
        return self.train([run], seed=seed)[0]

    def engine_for(self, runs: Sequence[ClientRun]) -> Engine:
        """The fused engine when it is on and can train every run exactly, else peft."""
        if self.lora_kernel != "fused":
            return self.peft
        for run in runs:
            reason = self.fused.why_not(run)
            if reason is not None:
                if reason not in self._warned:
                    self._warned.add(reason)
                    logger.info("fused LoRA kernel not usable (%s): such updates run on peft", reason)
                return self.peft
        return self.fused

    def _record(self, info: StepInfo) -> None:
        self.last_step = info
