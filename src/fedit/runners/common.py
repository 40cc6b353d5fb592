"""Set-up shared by every runner (simulation, Flower ServerApp/ClientApp, experiments):
the resident model with its LoRA adapter, the clients' data and the central evaluator.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from fedit.client import LocalTrainer
from fedit.config import Config, DataConfig
from fedit.data import Example, load_source, make_partitioner
from fedit.data.client_test import split_clients
from fedit.data.prompts import TokenizedExample, tokenize_examples
from fedit.errors import ConfigError
from fedit.eval import evaluate_loss
from fedit.model import AdapterState, BaseModel, add_lora, get_adapter_state, load_base_model, set_adapter_state

logger = logging.getLogger(__name__)


@dataclass
class Workbench:
    """The base model loaded once, wrapped with LoRA, and a trainer bound to it."""

    base: BaseModel
    model: Any                      # peft.PeftModel
    trainer: LocalTrainer
    initial_state: AdapterState     # the seeded LoRA init: round 0's global adapter

    @property
    def tokenizer(self):
        return self.base.tokenizer

    def tokenize(self, examples: Sequence[Example], data: DataConfig,
                 train_on_prompt: bool | None = None) -> list[TokenizedExample]:
        on_prompt = data.train_on_prompt if train_on_prompt is None else train_on_prompt
        toks, _ = tokenize_examples(self.tokenizer, examples, template=data.template,
                                    max_len=data.max_len, train_on_prompt=on_prompt)
        return toks

    def evaluate(self, state: AdapterState, test: Sequence[TokenizedExample], batch_size: int) -> dict:
        set_adapter_state(self.model, state)
        return evaluate_loss(self.model, test, device=self.base.device,
                             autocast_dtype=self.base.autocast_dtype,
                             pad_id=self.tokenizer.pad_token_id, batch_size=batch_size)

    def evaluator(self, test: Sequence[TokenizedExample], batch_size: int) -> Callable[[AdapterState], dict] | None:
        """Central evaluation on ``test`` for the round loop (None when there is no held-out data)."""
        if not test:
            return None
        return lambda state: self.evaluate(state, test, batch_size)


def build_workbench(cfg: Config) -> Workbench:
    base = load_base_model(cfg.model.model, cfg.model.device, cfg.model.precision, cfg.model.quantize)
    lora = cfg.lora
    model = add_lora(base.model, r=lora.lora_r, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                     targets=lora.lora_targets, seed=cfg.federation.seed)
    if cfg.train.gradient_checkpointing:
        enable_gradient_checkpointing(base.model)
    initial = get_adapter_state(model)
    trainer = LocalTrainer(model, device=base.device, autocast_dtype=base.autocast_dtype,
                           pad_id=base.tokenizer.pad_token_id, initial_state=initial,
                           lora_kernel=cfg.train.lora_kernel)
    return Workbench(base, model, trainer, initial)


def enable_gradient_checkpointing(model: Any) -> None:
    """transformers' activation checkpointing on the resident model. Non-reentrant: it needs no
    input that requires grad (only LoRA weights do) and replays the RNG, so LoRA dropout masks
    are the same in the recomputation. It acts inside the decoder layers, so the selective-head
    loss path (fedit.client.loss), which calls the decoder directly, is checkpointed too."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"--gradient-checkpointing: {type(model).__name__} does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):   # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    logger.info("gradient checkpointing on: activations are recomputed in the backward pass")


def data_seed(cfg: Config) -> int:
    """The seed of the data split (partition, client and test subsamples): --data-seed, else --seed.
    An experiment with several seeds keeps it fixed so that only training varies."""
    return cfg.data.data_seed if cfg.data.data_seed is not None else cfg.federation.seed


def subsample(examples: list[Example], limit: int | None, rng: np.random.Generator) -> list[Example]:
    """At most ``limit`` records, drawn without replacement, original order kept."""
    if limit is None or len(examples) <= limit:
        return examples
    keep = sorted(rng.choice(len(examples), size=limit, replace=False).tolist())
    return [examples[i] for i in keep]


def client_subsample(examples: list[Example], cfg: Config, client_id: int) -> list[Example]:
    """--max-client-records applied to one client; depends only on (seed, client id), so a
    Flower node holding that client's file draws the same subset as the simulation."""
    rng = np.random.default_rng([data_seed(cfg), 1, client_id])
    return subsample(examples, cfg.data.max_client_records, rng)


def load_clients(cfg: Config) -> list[list[Example]]:
    """The training records, partitioned over clients as the config says (without the records
    --client-test-fraction holds out: :func:`load_client_split`)."""
    return load_client_split(cfg)[0]


def load_client_split(cfg: Config) -> tuple[list[list[Example]], list[list[Example]], list[list[int]]]:
    """Every client's (training records, held-out records, held-out indices): fedit.data.client_test."""
    data = cfg.data
    examples, report = load_source(data.data, columns=data.columns)
    logger.info("training data %s: %s", data.data, report.summary())
    partitioner = make_partitioner(data.partition, num_partitions=data.num_clients,
                                   seed=data_seed(cfg), alpha=data.alpha,
                                   min_partition_size=data.min_client_size,
                                   shards_per_client=data.shards_per_client)
    parts = partitioner.partition(examples)
    clients = [client_subsample([examples[i] for i in part], cfg, cid) for cid, part in enumerate(parts)]
    logger.info("%d clients (%s partition), %d to %d records each", len(clients), data.partition,
                min(map(len, clients)), max(map(len, clients)))
    split = split_clients(clients, data.client_test_fraction, data_seed(cfg))
    if data.client_test_fraction is not None:
        logger.info("--client-test-fraction %g: %d records held out of the clients' training", data.client_test_fraction,
                    sum(map(len, split[1])))
    return split


def load_test(cfg: Config) -> list[Example]:
    """The held-out records of central evaluation (empty without --test-data)."""
    if cfg.data.test_data is None:
        return []
    examples, report = load_source(cfg.data.test_data, columns=cfg.data.columns)
    logger.info("test data %s: %s", cfg.data.test_data, report.summary())
    return subsample(examples, cfg.data.max_test_records, np.random.default_rng([data_seed(cfg), 2]))


def no_examples_reason(client_id: int, records: int, max_len: int) -> str:
    """Why a client has nothing to train on: every record was skipped when tokenized."""
    return (f"client {client_id}: none of its {records} records fits --max-len {max_len} "
            "(the prompt leaves no room for a response token)")


def clients_source(cfg: Config) -> str:
    """Where the number of clients comes from, for messages (see FederationConfig.clients_to_sample)."""
    return f"the files of --data {cfg.data.data}" if cfg.data.partition == "files" else "--num-clients"


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
