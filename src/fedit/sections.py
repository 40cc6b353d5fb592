"""The run's own settings (model, lora, data, train, federation): one dataclass per concern, validated
in ``__post_init__``, every field one CLI flag. fedit.config appends each method's options to the
section the method names and builds the whole Config from these (import them from fedit.config)."""

from __future__ import annotations

from dataclasses import dataclass

from fedit import registry
from fedit.method_api import option as _opt
from fedit.method_api import require as _require
from fedit.schema import Section as _Section
from fedit.schema import selector

# --server-lr when it is not given and the strategy declares none of its own (the plain average's step).
SERVER_LR = 1.0
PARTITION_NAMES = ("iid", "dirichlet", "shards", "files")
BY_FIELD = "by-field:"  # --partition by-field:FIELD: one client per value of a record field
TEMPLATE_NAMES = ("chat", "alpaca")
LR_SCHEDULES = ("constant", "cosine", "linear")
LOGGERS = ("auto", "none", "tensorboard", "mlflow", "wandb")
LORA_KERNELS = ("auto", "fused", "peft")
# The registered methods of each kind chosen by name (fedit.registry; plugins included).
STRATEGY_NAMES = registry.names("strategy")
LORA_AGGREGATIONS = registry.names("aggregation")
ROBUST_NAMES = ("none", *registry.names("defence"))
ATTACK_NAMES = ("none", *registry.names("attack"))
CODEC_NAMES = ("none", *registry.names("codec"))


# The one rule for --server-lr's default. FedAvgM and SCAFFOLD step by server_lr * (mean - global):
# 1.0 is the plain average (FedAvg's step). The adaptive optimizers move each coordinate by about
# server_lr * m / (sqrt(v) + tau), i.e. by up to server_lr per round whatever the clients' movement,
# so their server_lr must be of the order of what one round of local training moves a LoRA weight
# (at most local steps x --lr: ~1e-3 in the presets), not Reddi et al.'s 1e-2..1e-1 for whole models
# trained by SGD; OpenFedLLM (Ye et al., 2024) uses 1e-3 for the same methods on LoRA adapters.
# Each strategy states its own in its Method.defaults (fedit.methods.strategies). See docs/methods.md.
def default_server_lr(strategy: str) -> float:
    """--server-lr when it is not given: the strategy's own default (1e-3 for the adaptive optimizers), else 1.0."""
    return float(registry.method("strategy", strategy).defaults.get("server_lr", SERVER_LR))


def parse_columns(text: str | None) -> dict[str, str]:
    """``--columns instruction=question,response=answer`` -> {field: column}."""
    out: dict[str, str] = {}
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, column = (part.strip() for part in pair.partition("="))
        _require(bool(sep and name and column), "columns", f"expected FIELD=COLUMN pairs separated by commas, "
                                                          f"got {pair.strip()!r}")
        _require(name not in out, "columns", f"field {name!r} is mapped twice")
        out[name] = column
    return out


@dataclass
class ModelConfig(_Section):
    model: str = _opt("smollm2-135m-instruct", "base model: alias smollm2-135m-instruct, "
                      "tiny-random, a hub id, a local folder or a .gguf file")
    device: str = _opt("auto", "where to train", ("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "bf16 autocast where supported (auto), or force fp32/bf16",
                          ("auto", "fp32", "bf16"))
    quantize: str = _opt("none", "the frozen base model's linear layers in 4-bit NF4 or 8-bit int8 "
                         "(bitsandbytes: pip install 'fedit[quant]'); LoRA stays full precision",
                         ("none", "nf4", "int8"))

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(bool(self.model.strip()), "model", "must not be empty")


@dataclass
class LoraConfig(_Section):
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(16, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _opt(0.05, "dropout on the LoRA input")
    lora_targets: str = _opt("all-linear", "modules to adapt: all-linear or a comma list "
                             "(e.g. q_proj,v_proj)")
    lora_aggregation: str = selector("aggregation", "factors", "how the server combines the clients' adapters")
    client_ranks: str | None = _opt(None, "per-client LoRA rank, at most --lora-r: 8,4,2 (cycled over client "
                                    "ids) or 4:0.5,8:0.3,16:0.2 (drawn per client with --seed)")
    client_targets: str | None = _opt(None, "per-client modules, each within --lora-targets: lists separated "
                                      "by ';', e.g. 'q_proj,v_proj;all-linear' (cycled) or "
                                      "'q_proj,v_proj:0.5;all-linear:0.5' (drawn)")

    def __post_init__(self) -> None:
        if isinstance(self.client_ranks, int) and not isinstance(self.client_ranks, bool):
            self.client_ranks = str(self.client_ranks)  # YAML reads `client_ranks: 4` as a number
        _Section.__post_init__(self)
        _require(self.lora_r > 0, "lora_r", f"must be positive, got {self.lora_r}")
        _require(self.lora_alpha > 0, "lora_alpha", f"must be positive, got {self.lora_alpha}")
        _require(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        _require(bool(self.lora_targets.strip()), "lora_targets", "must not be empty")
        from fedit.client_lora import parse_client_ranks, parse_client_targets  # syntax errors name the flag

        for name, parse in (("client_ranks", parse_client_ranks), ("client_targets", parse_client_targets)):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().lower() in ("", "none"):
                value = None
                setattr(self, name, None)
            if value is not None:
                parse(value)


@dataclass
class DataConfig(_Section):
    data: str = _opt("dolly", "training data: dolly (FEDIT_DOLLY_DIR or the hub), a .json/.jsonl "
                     "file or a folder of them")
    test_data: str | None = _opt("dolly:test", "held-out data for central evaluation (none to skip)")
    template: str = _opt("chat", "prompt format: the model's chat template or Alpaca", TEMPLATE_NAMES)
    train_on_prompt: bool = _opt(False, "also train on prompt tokens (otherwise the loss is on the "
                                  "response tokens only)")
    max_len: int = _opt(512, "max tokens per example; the context is cut first, never the whole response")
    partition: str = _opt("dirichlet", "how records are split over clients: iid, dirichlet, shards, files "
                          "(one client per file) or by-field:FIELD (one client per value of a record field)")
    num_clients: int = _opt(100, "number of clients (ignored by --partition files and by-field:FIELD)")
    alpha: float = _opt(0.5, "Dirichlet concentration over categories (smaller = more skewed)")
    min_client_size: int = _opt(10, "dirichlet: resample until every client has this many records")
    shards_per_client: int = _opt(2, "shards: category-sorted shards given to each client")
    max_client_records: int | None = _opt(None, "use at most this many records per client (demos)")
    max_test_records: int | None = _opt(None, "evaluate on at most this many held-out records")
    columns: str | None = _opt(None, "read records with other field names: FIELD=COLUMN pairs, e.g. "
                               "instruction=question,response=answer (fields: instruction, context, response, "
                               "category, messages, conversations)")
    data_seed: int | None = _opt(None, "seed of the data split: partition and the --max-client-records / "
                                 "--max-test-records subsamples (none: --seed)")
    client_test_fraction: float | None = _opt(None, "keep this share of every client's own records out of "
                                              "training as its held-out set (seeded, stratified by category; "
                                              "per-client evaluation, docs/methods.md)")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.partition in PARTITION_NAMES or (self.partition.startswith(BY_FIELD)
                                                       and bool(self.partition[len(BY_FIELD):].strip())),
                 "partition", f"{self.partition!r} is not one of {', '.join(PARTITION_NAMES)}, {BY_FIELD}FIELD")
        parse_columns(self.columns)
        if isinstance(self.test_data, str) and self.test_data.lower() in ("", "none"):
            self.test_data = None
        _require(self.max_len >= 16, "max_len", f"must be at least 16, got {self.max_len}")
        _require(self.num_clients >= 1, "num_clients", f"must be at least 1, got {self.num_clients}")
        _require(self.alpha > 0, "alpha", f"must be positive, got {self.alpha}")
        _require(self.min_client_size >= 1, "min_client_size", f"must be at least 1, got {self.min_client_size}")
        _require(self.shards_per_client >= 1, "shards_per_client",
                 f"must be at least 1, got {self.shards_per_client}")
        _require(self.client_test_fraction is None or 0 < self.client_test_fraction < 1, "client_test_fraction",
                 f"must be in (0, 1), got {self.client_test_fraction}")
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
    lr_schedule: str = _opt("constant", "learning-rate schedule over the whole federation (--lr is its peak)",
                            LR_SCHEDULES)
    lr_schedule_unit: str = _opt("round", "what one schedule step is: a round (one lr per round, as "
                                 "OpenFedLLM) or a local optimizer step", ("round", "step"))
    warmup_steps: int = _opt(0, "linear warmup length in schedule steps (see --lr-schedule-unit)")
    gradient_checkpointing: bool = _opt(False, "recompute activations in the backward pass: less memory "
                                        "for longer sequences or bigger models, about a third more compute")
    lora_kernel: str = _opt("auto", "LoRA compute of local training: fused (packed sequences, projections "
                            "sharing an input in one matmul, one dropout mask per shared input; see "
                            "docs/performance.md), peft (PEFT's own layers), auto (fused where supported)",
                            LORA_KERNELS)

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
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
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclass
class FederationConfig(_Section):
    rounds: int = _opt(20, "federated rounds")
    clients_per_round: int | None = _opt(5, "clients sampled each round (or use --fraction)")
    fraction: float | None = _opt(None, "share of clients sampled each round; overrides --clients-per-round")
    strategy: str = selector("strategy", "fedavg", "server aggregation strategy")
    seed: int = _opt(42, "seed of client sampling, LoRA init and local training (and of the data split "
                         "unless --data-seed)")
    eval_batch_size: int = _opt(8, "examples per forward pass in central evaluation")
    keep_checkpoints: int = _opt(2, "how many round checkpoints to keep (the newest)")
    logger: str = _opt("auto", "experiment tracker fed with every metric (auto: tensorboard when installed, "
                       "else none)", LOGGERS)
    concurrent_clients: int | None = _opt(None, "simulation: clients of a round trained at once in one pass "
                                          "over the shared base (multi-LoRA, needs the fused LoRA kernel); "
                                          "default: all clients of the round as far as memory allows; "
                                          "1: one after another")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}")
        _require(self.clients_per_round is None or self.clients_per_round >= 1, "clients_per_round",
                 f"must be at least 1, got {self.clients_per_round}")
        _require(self.fraction is None or 0 < self.fraction <= 1, "fraction",
                 f"must be in (0, 1], got {self.fraction}")
        _require(self.clients_per_round is not None or self.fraction is not None, "clients_per_round",
                 "set --clients-per-round or --fraction")
        _require(0 <= self.seed < 2**63, "seed", f"must be in [0, 2**63), got {self.seed}")
        _require(self.eval_batch_size >= 1, "eval_batch_size", f"must be at least 1, got {self.eval_batch_size}")
        _require(self.keep_checkpoints >= 1, "keep_checkpoints",
                 f"must be at least 1, got {self.keep_checkpoints}")
        _require(self.concurrent_clients is None or self.concurrent_clients >= 1, "concurrent_clients",
                 f"must be at least 1, got {self.concurrent_clients}")

    @property
    def effective_server_lr(self) -> float:
        """--server-lr, or the default of this run's strategy when it is not set."""
        return self.server_lr if self.server_lr is not None else default_server_lr(self.strategy)

    def clients_to_sample(self, num_clients: int, source: str = "--num-clients") -> int:
        """How many clients one round samples, given how many exist; ``source`` says where that
        count came from (--num-clients, the files of --data, the --node-data list...)."""
        if self.fraction is not None:
            return max(1, round(self.fraction * num_clients))
        _require(self.clients_per_round <= num_clients, "clients_per_round",
                 f"{self.clients_per_round} is more than the {num_clients} clients ({source})")
        return self.clients_per_round
