"""Typed run configuration: one dataclass per concern, validated in ``__post_init__``.

Every field maps to exactly one CLI flag (``lora_r`` -> ``--lora-r``), so a validation error
can always name the flag to fix. Presets are YAML files with the same nested layout as the
``config.yaml`` a run writes; flags override presets, presets override defaults.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedit.errors import ConfigError
from fedit.registry import STRATEGIES

STRATEGY_NAMES = tuple(STRATEGIES)
PARTITION_NAMES = ("iid", "dirichlet", "shards", "files")
TEMPLATE_NAMES = ("chat", "alpaca")
LORA_KERNELS = ("auto", "fused", "peft")


def flag(name: str) -> str:
    """The CLI flag of a config field."""
    return "--" + name.replace("_", "-")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


def _require(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{flag(name)}: {msg}")


class _Section:
    """Shared behaviour: type checking of fields (YAML and flags feed arbitrary values)."""

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            args = typing.get_args(hint)
            allowed = tuple(a for a in args if a is not type(None)) if args else (hint,)
            if value is None and type(None) in args:
                continue
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if isinstance(value, bool) and bool not in allowed:
                ok = False
            else:
                ok = isinstance(value, allowed)
            names = "/".join(a.__name__ for a in allowed)
            _require(ok, f.name, f"expected {names}, got {value!r}")
            choices = f.metadata.get("choices")
            if choices:
                _require(value in choices, f.name, f"{value!r} is not one of {', '.join(choices)}")


@dataclass
class ModelConfig(_Section):
    model: str = _opt("smollm2-135m-instruct", "base model: alias smollm2-135m-instruct, "
                      "tiny-random, a hub id, a local folder or a .gguf file")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "bf16 autocast where supported (auto), or force fp32/bf16",
                          ("auto", "fp32", "bf16"))

    def __post_init__(self) -> None:
        self._check_types()
        _require(bool(self.model.strip()), "model", "must not be empty")


@dataclass
class LoraConfig(_Section):
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    lora_targets: str = _opt("all-linear", "modules to adapt: all-linear or a comma list "
                             "(e.g. q_proj,v_proj)")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.lora_r > 0, "lora_r", f"must be positive, got {self.lora_r}")
        _require(self.lora_alpha > 0, "lora_alpha", f"must be positive, got {self.lora_alpha}")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _require(bool(self.lora_targets.strip()), "lora_targets", "must not be empty")


@dataclass
class DataConfig(_Section):
    data: str = _opt("dolly", "training data: dolly (FEDIT_DOLLY_DIR or the hub), a .json/.jsonl "
                     "file or a folder of them")
    test_data: str | None = _opt("dolly:test", "held-out data for central evaluation (none to skip)")
    template: str = _opt("chat", "prompt format: the model's chat template or Alpaca", TEMPLATE_NAMES)
    train_on_prompt: bool = _opt(False, "also train on prompt tokens (default: response only)")
    max_len: int = _opt(512, "max tokens per example; the context is cut first, never the whole response")
    partition: str = _opt("dirichlet", "how records are split over clients", PARTITION_NAMES)
    num_clients: int = _opt(100, "number of clients (ignored by --partition files)")
    alpha: float = _opt(0.5, "Dirichlet concentration over categories (smaller = more skewed)")
    min_client_size: int = _opt(10, "dirichlet: resample until every client has this many records")
    shards_per_client: int = _opt(2, "shards: category-sorted shards given to each client")
    max_client_records: int | None = _opt(None, "use at most this many records per client (demos)")
    max_test_records: int | None = _opt(None, "evaluate on at most this many held-out records")

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.test_data, str) and self.test_data.lower() in ("", "none"):
            self.test_data = None
        _require(self.max_len >= 16, "max_len", f"must be at least 16, got {self.max_len}")
        _require(self.num_clients >= 1, "num_clients", f"must be at least 1, got {self.num_clients}")
        _require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        _require(self.min_client_size >= 1, "min_client_size", f"must be at least 1, got {self.min_client_size}")
        _require(self.shards_per_client >= 1, "shards_per_client",
                 f"must be at least 1, got {self.shards_per_client}")
        for name in ("max_client_records", "max_test_records"):
            value = getattr(self, name)
            _require(value is None or value >= 1, name, f"must be at least 1, got {value}")


@dataclass
class TrainConfig(_Section):
    lr: float = _opt(1.5e-4, "AdamW learning rate of the local training")
    batch_size: int = _opt(32, "examples per optimizer step")
    micro_batch_size: int = _opt(8, "examples per forward pass (gradient accumulation = batch / micro)")
    local_epochs: float = _opt(1.0, "passes over the client's data per round (see --local-steps)")
    local_steps: int | None = _opt(None, "optimizer steps per round; overrides --local-epochs")
    grad_clip: float = _opt(1.0, "max gradient norm (0 disables clipping)")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    proximal_mu: float = _opt(0.01, "fedprox: weight of the proximal term mu/2*||w - w_global||^2")
    lora_kernel: str = _opt("auto", "LoRA compute of local training: fused (packed sequences, projections "
                            "sharing an input in one matmul, one dropout mask per shared input; see "
                            "docs/performance.md), peft (PEFT's own layers), auto (fused where supported)",
                            LORA_KERNELS)

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.lr > 0, "lr", f"must be positive, got {self.lr}")
        _require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        _require(self.micro_batch_size >= 1, "micro_batch_size",
                 f"must be at least 1, got {self.micro_batch_size}")
        _require(self.micro_batch_size <= self.batch_size, "micro_batch_size",
                 f"{self.micro_batch_size} is larger than --batch-size {self.batch_size}")
        _require(self.batch_size % self.micro_batch_size == 0, "batch_size",
                 f"{self.batch_size} is not a multiple of --micro-batch-size {self.micro_batch_size}")
        _require(self.local_epochs > 0, "local_epochs", f"must be positive, got {self.local_epochs}")
        _require(self.local_steps is None or self.local_steps >= 1, "local_steps",
                 f"must be at least 1, got {self.local_steps}")
        _require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        _require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.proximal_mu >= 0, "proximal_mu", f"must be >= 0, got {self.proximal_mu}")


@dataclass
class FederationConfig(_Section):
    rounds: int = _opt(20, "federated rounds")
    clients_per_round: int | None = _opt(5, "clients sampled each round (or use --fraction)")
    fraction: float | None = _opt(None, "share of clients sampled each round; overrides --clients-per-round")
    strategy: str = _opt("fedavg", "server aggregation strategy", STRATEGY_NAMES)
    server_lr: float = _opt(1.0, "fedavgm: server learning rate")
    server_momentum: float = _opt(0.9, "fedavgm: server momentum")
    seed: int = _opt(42, "seed of sampling, partitioning, LoRA init and local training")
    eval_batch_size: int = _opt(8, "examples per forward pass in central evaluation")
    keep_checkpoints: int = _opt(2, "how many round checkpoints to keep (the newest)")
    concurrent_clients: int | None = _opt(None, "simulation: clients of a round trained at once in one pass "
                                          "over the shared base (multi-LoRA, needs the fused LoRA kernel); "
                                          "default: all clients of the round as far as memory allows; "
                                          "1: one after another")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}")
        _require(self.clients_per_round is None or self.clients_per_round >= 1, "clients_per_round",
                 f"must be at least 1, got {self.clients_per_round}")
        _require(self.fraction is None or 0 < self.fraction <= 1, "fraction",
                 f"must be in (0, 1], got {self.fraction}")
        _require(self.clients_per_round is not None or self.fraction is not None, "clients_per_round",
                 "set --clients-per-round or --fraction")
        _require(self.server_lr > 0, "server_lr", f"must be positive, got {self.server_lr}")
        _require(0 <= self.server_momentum < 1, "server_momentum",
                 f"must be in [0, 1), got {self.server_momentum}")
        _require(self.eval_batch_size >= 1, "eval_batch_size", f"must be at least 1, got {self.eval_batch_size}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints",
                 f"must be at least 1, got {self.keep_checkpoints}")
        _require(self.concurrent_clients is None or self.concurrent_clients >= 1, "concurrent_clients",
                 f"must be at least 1, got {self.concurrent_clients}")

    def clients_to_sample(self, num_clients: int) -> int:
        """How many clients one round samples, given how many exist."""
        if self.fraction is not None:
            return max(1, round(self.fraction * num_clients))
        _require(self.clients_per_round <= num_clients, "clients_per_round",
                 f"{self.clients_per_round} is more than the {num_clients} clients (--num-clients)")
        return self.clients_per_round


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "federation": FederationConfig,
}


@dataclass
class Config:
    """The whole resolved configuration of a run (what ``config.yaml`` holds)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)

    def __post_init__(self) -> None:
        _require(self.federation.concurrent_clients in (None, 1) or self.train.lora_kernel != "peft",
                 "concurrent_clients", "training clients at once needs --lora-kernel fused (or auto)")
        if self.data.partition != "files" and self.federation.clients_per_round is not None \
                and self.federation.fraction is None:
            self.federation.clients_to_sample(self.data.num_clients)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every field of every section by its own name (names are unique across sections)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "config") -> Config:
        """Build from a nested dict (a preset or a config.yaml); unknown keys are errors."""
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections ({', '.join(SECTIONS)})")
        sections = {}
        for name, values in data.items():
            if name not in SECTIONS:
                raise ConfigError(f"{origin}: unknown section '{name}' (known: {', '.join(SECTIONS)})")
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: section '{name}' must be a mapping")
            known = {f.name for f in dataclasses.fields(SECTIONS[name])}
            for key in values:
                if key not in known:
                    raise ConfigError(f"{origin}: unknown key '{name}.{key}'")
            sections[name] = SECTIONS[name](**values)
        return cls(**sections)

    def override(self, flat: dict[str, Any]) -> Config:
        """A new config with flat ``{field: value}`` overrides applied (flags over presets)."""
        nested = self.to_dict()
        owner = field_sections()
        for key, value in flat.items():
            if key not in owner:
                raise ConfigError(f"{flag(key)}: unknown option")
            nested[owner[key]][key] = value
        return Config.from_dict(nested)


@dataclass
class DeployConfig(_Section):
    """Settings of a Flower deployment's server side (not part of a run's config.yaml: they
    change how the federation is run, not what it computes)."""

    min_nodes: int = _opt(1, "valid updates a round needs; fewer stops the run (resumable with --resume)")
    wait_nodes: int | None = _opt(None, "nodes to wait for before round 1 (default: --min-nodes; "
                                  "deploy local: every --node-data node)")
    node_timeout: float = _opt(300.0, "seconds to wait for the nodes to connect and answer the roll call")
    round_timeout: float = _opt(0.0, "seconds a round waits for replies (0: until every node answers)")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.min_nodes >= 1, "min_nodes", f"must be at least 1, got {self.min_nodes}")
        _require(self.wait_nodes is None or self.wait_nodes >= 1, "wait_nodes",
                 f"must be at least 1, got {self.wait_nodes}")
        _require(self.node_timeout > 0, "node_timeout", f"must be positive, got {self.node_timeout}")
        _require(self.round_timeout >= 0, "round_timeout", f"must be >= 0 (0: no limit), got {self.round_timeout}")

    @property
    def nodes_to_wait_for(self) -> int:
        return max(self.min_nodes, self.wait_nodes or self.min_nodes)


# Sections that define CLI flags besides the run's own (their names must not clash with any).
EXTRA_SECTIONS: dict[str, type[_Section]] = {"deploy": DeployConfig}


def field_sections() -> dict[str, str]:
    """Map every field name to the section that owns it."""
    return {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


PRESET_DIR = "configs"


def preset_names() -> list[str]:
    files = resources.files("fedit").joinpath(PRESET_DIR).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def load_config(spec: str | None) -> Config:
    """Load a preset by name (``cpu-demo``, ``paper``...) or a YAML file path; None = defaults."""
    if spec is None:
        return Config()
    path = Path(spec)
    if not path.suffix and spec in preset_names():
        text = resources.files("fedit").joinpath(PRESET_DIR, f"{spec}.yaml").read_text()
        origin = f"preset {spec}"
    elif path.is_file():
        text, origin = path.read_text(), str(path)
    else:
        raise ConfigError(f"--config: '{spec}' is neither a preset ({', '.join(preset_names())}) nor a file")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{origin}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return Config.from_dict(data, origin)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
