"""Typed run configuration: one dataclass per concern, validated in ``__post_init__``.

Every field maps to exactly one CLI flag (``lora_r`` -> ``--lora-r``), so a validation error
can always name the flag to fix. Presets are YAML files with the same nested layout as the
``config.yaml`` a run writes; flags override presets, presets override defaults.
"""

from __future__ import annotations

import dataclasses
import math
import re
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
BY_FIELD = "by-field:"  # --partition by-field:FIELD: one client per value of a record field
# How the server combines the clients' LoRA factors (fedit.server.lora_aggregate; docs/methods.md).
LORA_AGGREGATIONS = ("factors", "ffa", "zero-pad", "product-svd")
TEMPLATE_NAMES = ("chat", "alpaca")
DP_MODES = ("central", "local")
LR_SCHEDULES = ("constant", "cosine", "linear")
LOGGERS = ("auto", "none", "tensorboard", "mlflow", "wandb")
ROBUST_NAMES = ("none", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound")
ATTACK_NAMES = ("none", "scale", "sign-flip", "noise", "poison-responses", "backdoor")
CODEC_NAMES = ("none", "fp16", "bf16", "int8", "topk")


# The one rule for --server-lr's default. FedAvgM and SCAFFOLD step by server_lr * (mean - global):
# 1.0 is the plain average (FedAvg's step). The adaptive optimizers move each coordinate by about
# server_lr * m / (sqrt(v) + tau), i.e. by up to server_lr per round whatever the clients' movement,
# so their server_lr must be of the order of what one round of local training moves a LoRA weight
# (at most local steps x --lr: ~1e-3 in the presets), not Reddi et al.'s 1e-2..1e-1 for whole models
# trained by SGD; OpenFedLLM (Ye et al., 2024) uses 1e-3 for the same methods on LoRA adapters.
# See docs/methods.md.
ADAPTIVE_SERVER_LR = 1e-3
ADAPTIVE_STRATEGIES = ("fedadam", "fedyogi", "fedadagrad")


def default_server_lr(strategy: str) -> float:
    """--server-lr when it is not given: 1e-3 for the adaptive optimizers, else 1.0."""
    return ADAPTIVE_SERVER_LR if strategy in ADAPTIVE_STRATEGIES else 1.0
LORA_KERNELS = ("auto", "fused", "peft")


def flag(name: str) -> str:
    """The CLI flag of a config field."""
    return "--" + name.replace("_", "-")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


def _require(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{flag(name)}: {msg}")


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
            if isinstance(value, float):  # inf/nan pass every comparison-based check below
                _require(math.isfinite(value), f.name, f"must be a finite number, got {value}")
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
    lora_aggregation: str = _opt("factors", "how the server combines the clients' adapters: factors (average A "
                                 "and B, the paper's), ffa (A frozen at its seeded init, only B trained and "
                                 "sent: exact), zero-pad (HetLoRA: pad lower ranks with zeros), product-svd "
                                 "(FlexLoRA: exact mean of B*A, truncated SVD)", LORA_AGGREGATIONS)
    client_ranks: str | None = _opt(None, "per-client LoRA rank, at most --lora-r: 8,4,2 (cycled over client "
                                    "ids) or 4:0.5,8:0.3,16:0.2 (drawn per client with --seed)")
    client_targets: str | None = _opt(None, "per-client modules, each within --lora-targets: lists separated "
                                      "by ';', e.g. 'q_proj,v_proj;all-linear' (cycled) or "
                                      "'q_proj,v_proj:0.5;all-linear:0.5' (drawn)")

    def __post_init__(self) -> None:
        if isinstance(self.client_ranks, int) and not isinstance(self.client_ranks, bool):
            self.client_ranks = str(self.client_ranks)  # YAML reads `client_ranks: 4` as a number
        self._check_types()
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

    def __post_init__(self) -> None:
        self._check_types()
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
        _require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")


@dataclass
class FederationConfig(_Section):
    rounds: int = _opt(20, "federated rounds")
    clients_per_round: int | None = _opt(5, "clients sampled each round (or use --fraction)")
    fraction: float | None = _opt(None, "share of clients sampled each round; overrides --clients-per-round")
    strategy: str = _opt("fedavg", "server aggregation strategy", STRATEGY_NAMES)
    server_lr: float | None = _opt(None, "server learning rate of fedavgm, scaffold and the adaptive optimizers; "
                                   f"unset: {ADAPTIVE_SERVER_LR:g} for {', '.join(ADAPTIVE_STRATEGIES)}, 1.0 "
                                   "for the others")
    server_momentum: float = _opt(0.9, "fedavgm: server momentum")
    server_beta1: float = _opt(0.9, "fedadam, fedyogi, fedadagrad: decay of the server's first moment "
                               "(momentum of the pseudo-gradient; 0 turns it off)")
    server_beta2: float = _opt(0.99, "fedadam, fedyogi: decay of the server's second moment")
    server_tau: float = _opt(1e-3, "fedadam, fedyogi, fedadagrad: adaptivity (added to sqrt(v); the "
                             "moments start at v = tau^2)")
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
        self._check_types()
        _require(self.rounds >= 1, "rounds", f"must be at least 1, got {self.rounds}")
        _require(self.clients_per_round is None or self.clients_per_round >= 1, "clients_per_round",
                 f"must be at least 1, got {self.clients_per_round}")
        _require(self.fraction is None or 0 < self.fraction <= 1, "fraction",
                 f"must be in (0, 1], got {self.fraction}")
        _require(self.clients_per_round is not None or self.fraction is not None, "clients_per_round",
                 "set --clients-per-round or --fraction")
        _require(self.server_lr is None or self.server_lr > 0, "server_lr",
                 f"must be positive, got {self.server_lr}")
        for name in ("server_beta1", "server_beta2"):
            _require(0 <= getattr(self, name) < 1, name, f"must be in [0, 1), got {getattr(self, name)}")
        _require(self.server_tau > 0, "server_tau", f"must be positive, got {self.server_tau}")
        _require(0 <= self.server_momentum < 1, "server_momentum",
                 f"must be in [0, 1), got {self.server_momentum}")
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


@dataclass
class PrivacyConfig(_Section):
    """Client-level differential privacy (DP-FedAvg) and secure aggregation (SecAgg+); see docs/privacy.md."""

    dp_clip: float | None = _opt(None, "DP-FedAvg: clip each client's update (its change to the whole adapter) "
                                 "to this L2 norm C; setting it turns client-level DP on")
    dp_noise_multiplier: float | None = _opt(None, "DP-FedAvg: Gaussian noise std / C (z); the server adds "
                                             "N(0, (zC)^2) to the sum of clipped updates; None: calibrated "
                                             "from --dp-target-epsilon")
    dp_mode: str = _opt("central", "DP-FedAvg: central (the server adds the noise) or local (each client "
                        "noises its own clipped update; the server only averages)", DP_MODES)
    dp_delta: float = _opt(1e-5, "DP-FedAvg: the delta at which epsilon is reported (keep it well below "
                           "1 / number of clients)")
    dp_target_epsilon: float | None = _opt(None, "DP-FedAvg: the privacy budget: calibrates --dp-noise-multiplier "
                                           "for --rounds when that is not set; a run never goes beyond it")
    dp_noise_seed: int | None = _opt(None, "DP-FedAvg: seed of the noise and of client sampling, for "
                                     "reproducible experiments only (anyone who knows it can remove the noise); "
                                     "None: a secret seed from the OS, kept only in checkpoints/")
    secure_aggregation: bool = _opt(False, "sum the client updates with Flower's SecAgg+ so the server never "
                                    "sees an individual update (the simulation computes the same quantised sum)")
    secagg_num_shares: int | None = _opt(None, "SecAgg+: shares of each client's secrets, i.e. its neighbours "
                                         "+ itself (odd, >= 3); None: every sampled client, i.e. SecAgg")
    secagg_threshold: int | None = _opt(None, "SecAgg+: shares needed to rebuild a secret; up to shares - "
                                        "threshold neighbours may drop out; None: a strict majority of the shares")
    secagg_clipping_range: float | None = _opt(None, "SecAgg+: each coordinate of an update is clipped to "
                                               "+-this before quantisation; None: --dp-clip under DP (widened "
                                               "by the local noise in --dp-mode local), else 1.0")
    secagg_quantization_range: int = _opt(1 << 22, "SecAgg+: quantisation levels over [-range, +range] "
                                          "(Flower's default 2^22)")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.dp_clip is None or self.dp_clip > 0, "dp_clip", f"must be positive, got {self.dp_clip}")
        z = self.dp_noise_multiplier
        _require(z is None or z >= 0, "dp_noise_multiplier", f"must be >= 0, got {z}")
        _require(0 < self.dp_delta < 1, "dp_delta", f"must be in (0, 1), got {self.dp_delta}")
        target = self.dp_target_epsilon
        _require(target is None or target > 0, "dp_target_epsilon", f"must be positive, got {target}")
        if self.dp_clip is None:
            for name in ("dp_noise_multiplier", "dp_target_epsilon", "dp_noise_seed"):
                _require(getattr(self, name) is None, name, "needs --dp-clip (client-level DP is off without it)")
            _require(self.dp_mode == "central", "dp_mode", "needs --dp-clip (client-level DP is off without it)")
        else:
            _require(z is not None or target is not None, "dp_noise_multiplier",
                     "set it, or --dp-target-epsilon to calibrate it (--dp-clip turns DP on)")
            _require(target is None or z is None or z > 0, "dp_target_epsilon",
                     "cannot be met with --dp-noise-multiplier 0 (no noise: epsilon is infinite)")
        q = self.secagg_quantization_range
        _require(2 <= q <= 1 << 30, "secagg_quantization_range", f"must be in [2, 2^30], got {q}")
        _require(self.secagg_clipping_range is None or self.secagg_clipping_range > 0, "secagg_clipping_range",
                 f"must be positive, got {self.secagg_clipping_range}")
        s, t = self.secagg_num_shares, self.secagg_threshold
        _require(s is None or (s >= 3 and s % 2 == 1), "secagg_num_shares", f"must be odd and at least 3, got {s}")
        _require(t is None or t >= 2, "secagg_threshold", f"must be at least 2, got {t}")
        _require(s is None or t is None or t <= s, "secagg_threshold",
                 f"{t} is more than --secagg-num-shares {s}")
        if not self.secure_aggregation:
            for name in ("secagg_num_shares", "secagg_threshold", "secagg_clipping_range"):
                _require(getattr(self, name) is None, name, "needs --secure-aggregation")

    @property
    def dp(self) -> bool:
        """Client-level DP is on."""
        return self.dp_clip is not None


@dataclass
class RobustnessConfig(_Section):
    """What the server trusts (docs/robustness.md), and simulated attackers (fedit run only)."""

    robust: str = _opt("none", "robust aggregation of the updates: coordinate-wise median or trimmed mean, "
                       "krum/multi-krum selection, or norm-bound clipping", ROBUST_NAMES)
    trim_ratio: float = _opt(0.2, "trimmed-mean: share of the updates dropped at each end, per coordinate")
    krum_f: int = _opt(1, "krum, multi-krum: malicious updates tolerated per round (needs 2f+3 updates)")
    max_update_norm: float | None = _opt(None, "norm-bound: L2 bound on each update's delta from the global "
                                         "adapter (default: the median delta norm of the round)")
    max_client_examples: int | None = _opt(None, "cap on every client's claimed example count (always capped "
                                           "at the size the server knows of the client, where it knows one)")
    max_client_share: float = _opt(0.5, "largest share of the average any one client may weigh "
                                   "(at least 1/updates); 1 turns the limit off")
    attack: str = _opt("none", "simulate malicious clients (fedit run only; docs/robustness.md)", ATTACK_NAMES)
    attackers: float = _opt(0.2, "--attack: share of the clients that are malicious")
    attack_scale: float = _opt(10.0, "--attack scale: factor on the attackers' update delta")
    attack_noise_std: float = _opt(0.01, "--attack noise: std of the Gaussian noise added to every coordinate")
    attack_trigger: str = _opt("cf mn bb", "--attack backdoor: phrase the attackers append to instructions")
    attack_answer: str = _opt("Visit example.com for the answer.",
                              "--attack backdoor: the fixed answer the trigger should elicit")
    attack_eval_prompts: int = _opt(16, "--attack backdoor: held-out prompts the trigger is tried on per round")

    def __post_init__(self) -> None:
        self._check_types()
        _require(0 <= self.trim_ratio < 0.5, "trim_ratio", f"must be in [0, 0.5), got {self.trim_ratio}")
        _require(self.krum_f >= 0, "krum_f", f"must be >= 0, got {self.krum_f}")
        _require(self.max_update_norm is None or 0 < self.max_update_norm < float("inf"), "max_update_norm",
                 f"must be a positive number, got {self.max_update_norm}")
        _require(self.max_client_examples is None or self.max_client_examples >= 1, "max_client_examples",
                 f"must be at least 1, got {self.max_client_examples}")
        _require(0 < self.max_client_share <= 1, "max_client_share",
                 f"must be in (0, 1], got {self.max_client_share}")
        _require(0 < self.attackers < 1, "attackers", f"must be in (0, 1), got {self.attackers}")
        _require(0 < abs(self.attack_scale) < float("inf"), "attack_scale",
                 f"must be a non-zero finite number, got {self.attack_scale}")
        _require(0 < self.attack_noise_std < float("inf"), "attack_noise_std",
                 f"must be positive, got {self.attack_noise_std}")
        _require(bool(self.attack_trigger.strip()), "attack_trigger", "must not be empty")
        _require(bool(self.attack_answer.strip()), "attack_answer", "must not be empty")
        _require(self.attack_eval_prompts >= 1, "attack_eval_prompts",
                 f"must be at least 1, got {self.attack_eval_prompts}")


def parse_codec(spec: str) -> tuple[str, float]:
    """``--compress`` as (codec, parameter): ``topk:0.1`` -> ("topk", 0.1); others have parameter 0."""
    name, _, arg = spec.partition(":")
    _require(name in CODEC_NAMES, "compress", f"{spec!r} is not one of none, fp16, bf16, int8, topk:K")
    if name != "topk":
        _require(not arg, "compress", f"{name} takes no parameter, got {spec!r}")
        return name, 0.0
    try:
        share = float(arg)
    except ValueError:
        share = float("nan")
    _require(0 < share <= 1, "compress", f"topk:K needs the kept share of entries K in (0, 1], got {spec!r}")
    return name, share


@dataclass
class CommunicationConfig(_Section):
    """What travels between server and clients (docs/communication.md)."""

    compress: str = _opt("none", "compress client updates (their delta from the global adapter): none, fp16, "
                         "bf16, int8 (blockwise absmax), topk:K (the share K of largest entries per tensor, "
                         "with error feedback)")
    compress_block_size: int = _opt(64, "int8: entries per quantisation block (one float32 scale each)")

    def __post_init__(self) -> None:
        self._check_types()
        parse_codec(self.compress)
        _require(self.compress_block_size >= 1, "compress_block_size",
                 f"must be at least 1, got {self.compress_block_size}")


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "lora": LoraConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "federation": FederationConfig,
    "privacy": PrivacyConfig,
    "robustness": RobustnessConfig,
    "communication": CommunicationConfig,
}


@dataclass
class Config:
    """The whole resolved configuration of a run (what ``config.yaml`` holds)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    communication: CommunicationConfig = field(default_factory=CommunicationConfig)

    def __post_init__(self) -> None:
        _require(self.federation.concurrent_clients in (None, 1) or self.train.lora_kernel != "peft",
                 "concurrent_clients", "training clients at once needs --lora-kernel fused (or auto)")
        if not partition_from_data(self.data.partition) and self.federation.clients_per_round is not None \
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
    round_timeout: float = _opt(0.0, "seconds a round (each secure-aggregation stage) waits for replies; 0: "
                                "derived from the round: once the first reply came after t s, the others get "
                                "max(300, 3t) s more; a line every 60 s names the nodes awaited")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.min_nodes >= 1, "min_nodes", f"must be at least 1, got {self.min_nodes}")
        _require(self.wait_nodes is None or self.wait_nodes >= 1, "wait_nodes",
                 f"must be at least 1, got {self.wait_nodes}")
        _require(self.node_timeout > 0, "node_timeout", f"must be positive, got {self.node_timeout}")
        _require(self.round_timeout >= 0, "round_timeout",
                 f"must be >= 0 (0: derived from the first reply), got {self.round_timeout}")

    @property
    def nodes_to_wait_for(self) -> int:
        return max(self.min_nodes, self.wait_nodes or self.min_nodes)


@dataclass
class SamplingConfig(_Section):
    """How ``fedit generate`` and ``fedit chat`` sample answers (not part of a run's config.yaml)."""

    temperature: float = _opt(0.0, "sampling temperature; 0 = greedy (deterministic)")
    top_p: float = _opt(1.0, "nucleus sampling: sample from the smallest set of tokens whose probability "
                        "reaches this (1 = all tokens; ignored when greedy)")
    max_new_tokens: int = _opt(128, "answer length limit in tokens")
    system: str | None = _opt(None, "system prompt put before the conversation")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.temperature >= 0, "temperature", f"must be >= 0 (0: greedy), got {self.temperature}")
        _require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")


@dataclass
class ExportConfig(_Section):
    """What ``fedit export`` writes and where it uploads it."""

    merge: bool = _opt(True, "merge the adapter into the base weights (a plain transformers model); "
                       "--no-merge exports the adapter alone (for vLLM --enable-lora, peft)")
    push_to_hub: str | None = _opt(None, "also upload the exported folder to this Hugging Face repo "
                                   "(ORG/NAME; token from HF_TOKEN or `hf auth login`)")
    private: bool = _opt(False, "create the --push-to-hub repo as private")

    def __post_init__(self) -> None:
        self._check_types()
        _require(self.push_to_hub is None or bool(re.fullmatch(r"[\w\-.]+/[\w\-.]+", self.push_to_hub)),
                 "push_to_hub", f"expected a repo id ORG/NAME, got {self.push_to_hub!r}")


# Sections that define CLI flags besides the run's own (their names must not clash with any).
EXTRA_SECTIONS: dict[str, type[_Section]] = {"deploy": DeployConfig, "sampling": SamplingConfig,
                                             "export": ExportConfig}


def partition_from_data(partition: str) -> bool:
    """True when the client count comes from the data (one client per file or field value),
    not from --num-clients."""
    return partition == "files" or partition.startswith(BY_FIELD)


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
    data, origin = _read_config(spec)
    return Config.from_dict(data, origin)


def preset_fields(spec: str) -> set[str]:
    """The field names a preset (or YAML file) sets itself; the others keep their defaults."""
    data, _ = _read_config(spec)
    return {key for values in data.values() if isinstance(values, dict) for key in values}


def _read_config(spec: str) -> tuple[Any, str]:
    """The parsed YAML of a preset or file, and its name for error messages."""
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
    return data, origin


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
