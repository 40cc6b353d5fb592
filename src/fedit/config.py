"""Typed run configuration: the run's sections, validated in ``__post_init__``, and the Config they make.

The run's own settings (model, lora, data, train, federation) are declared in fedit.sections, the
settings of the commands around a run (deploy, sampling, export) in fedit.command_settings; every
method's options come from the method's own module and are appended to the section it names
(fedit.schema.compose, fedit.registry). Every field maps to exactly one CLI flag (``lora_r`` ->
``--lora-r``), so a validation error can always name the flag to fix. Presets are YAML files with
the same nested layout as the ``config.yaml`` a run writes; flags override presets, presets override
defaults. Import every section from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fedit import registry
from fedit.command_settings import EXTRA_SECTIONS, DeployConfig, ExportConfig, SamplingConfig
from fedit.errors import ConfigError
from fedit.method_api import flag
from fedit.method_api import option as _opt
from fedit.method_api import require as _require
from fedit.schema import Section as _Section
from fedit.schema import compose, method_sections, selector
from fedit.sections import (ATTACK_NAMES, BY_FIELD, CODEC_NAMES, LOGGERS, LORA_AGGREGATIONS, LORA_KERNELS,
                            LR_SCHEDULES, PARTITION_NAMES, ROBUST_NAMES, STRATEGY_NAMES, TEMPLATE_NAMES, DataConfig,
                            FederationConfig, LoraConfig, ModelConfig, TrainConfig, default_server_lr, parse_columns)

__all__ = ["ATTACK_NAMES", "BY_FIELD", "CODEC_NAMES", "LOGGERS", "LORA_AGGREGATIONS", "LORA_KERNELS",
           "LR_SCHEDULES", "PARTITION_NAMES", "ROBUST_NAMES", "STRATEGY_NAMES", "TEMPLATE_NAMES", "DataConfig",
           "DeployConfig", "EXTRA_SECTIONS", "ExportConfig", "ModelConfig", "SamplingConfig", "default_server_lr",
           "flag", "parse_columns"]


@dataclass
class PrivacyConfig(_Section):
    """Client-level differential privacy (DP-FedAvg) and secure aggregation (SecAgg+); see docs/privacy.md.
    Their options are the methods' own (fedit.methods.privacy)."""

    @property
    def dp(self) -> bool:
        """Client-level DP is on."""
        return self.dp_clip is not None


@dataclass
class RobustnessConfig(_Section):
    """What the server trusts (docs/robustness.md), and simulated attackers (fedit run only). The
    defences' and the attacks' options are their own (fedit.methods.defences, fedit.methods.attacks)."""

    robust: str = selector("defence", "none", "robust aggregation of the updates", none=True)
    max_client_examples: int | None = _opt(None, "cap on every client's claimed example count (always capped "
                                           "at the size the server knows of the client, where it knows one)")
    max_client_share: float = _opt(0.5, "largest share of the average any one client may weigh "
                                   "(at least 1/updates); 1 turns the limit off")
    attack: str = selector("attack", "none", "simulate malicious clients (fedit run only; docs/robustness.md)",
                           none=True)

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.max_client_examples is None or self.max_client_examples >= 1, "max_client_examples",
                 f"must be at least 1, got {self.max_client_examples}")
        _require(0 < self.max_client_share <= 1, "max_client_share",
                 f"must be in (0, 1], got {self.max_client_share}")


def parse_codec(spec: str) -> tuple[str, float]:
    """``--compress`` as (codec, parameter): ``topk:0.1`` -> ("topk", 0.1); others have parameter 0.
    A codec whose server half declares a ``parameter`` takes a share in (0, 1] after a colon."""
    name, _, arg = spec.partition(":")
    codecs = {m.name: getattr(m.half("server"), "parameter", None) for m in registry.methods("codec")}
    known = ", ".join(["none"] + [f"{n}:{p}" if p else n for n, p in codecs.items()])
    _require(name == "none" or name in codecs, "compress", f"{spec!r} is not one of {known}")
    if not codecs.get(name):
        _require(not arg, "compress", f"{name} takes no parameter, got {spec!r}")
        return name, 0.0
    try:
        share = float(arg)
    except ValueError:
        share = float("nan")
    _require(0 < share <= 1, "compress", f"{name}:{codecs[name]} needs the kept share of entries {codecs[name]} "
             f"in (0, 1], got {spec!r}")
    return name, share


@dataclass
class CommunicationConfig(_Section):
    """What travels between server and clients (docs/communication.md); the codecs are methods
    (fedit.methods.codecs)."""

    compress: str = selector("codec", "none", "compress client updates (their delta from the global adapter); "
                             "topk:K keeps the share K of largest entries per tensor, with error feedback",
                             none=True, choices=False)

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        parse_codec(self.compress)


# The run's sections, each with its methods' options appended (fedit.schema.compose), then a section
# per plugin that keeps its options under its own name.
LoraConfig = compose("lora", LoraConfig)
TrainConfig = compose("train", TrainConfig)
FederationConfig = compose("federation", FederationConfig)
PrivacyConfig = compose("privacy", PrivacyConfig)
RobustnessConfig = compose("robustness", RobustnessConfig)
CommunicationConfig = compose("communication", CommunicationConfig)

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
for _name in method_sections():
    if _name not in SECTIONS:
        SECTIONS[_name] = compose(_name, dataclasses.make_dataclass(_name.title().replace("_", "") + "Options", [],
                                                                  bases=(_Section,)))


class _ConfigBase:
    """The whole resolved configuration of a run (what ``config.yaml`` holds): one field per section
    of SECTIONS (``Config`` below is this class with those fields)."""

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
        check_keys(data, origin)
        return cls(**{name: SECTIONS[name](**values) for name, values in data.items()})

    def override(self, flat: dict[str, Any]) -> Config:
        """A new config with flat ``{field: value}`` overrides applied (flags over presets)."""
        nested = self.to_dict()
        owner = field_sections()
        for key, value in flat.items():
            if key not in owner:
                raise ConfigError(f"{flag(key)}: unknown option")
            nested[owner[key]][key] = value
        return Config.from_dict(nested)


Config = dataclasses.make_dataclass("Config", [(name, cls, field(default_factory=cls))
                                               for name, cls in SECTIONS.items()], bases=(_ConfigBase,))
Config.__module__, Config.__doc__ = __name__, _ConfigBase.__doc__


def check_keys(data: Any, origin: str) -> None:
    """A config mapping's unknown sections and keys are errors naming ``origin`` (its file)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections ({', '.join(SECTIONS)})")
    for name, values in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{origin}: unknown section '{name}' (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section '{name}' must be a mapping")
        known = {f.name for f in dataclasses.fields(SECTIONS[name])}
        for key in values:
            if key not in known:
                raise ConfigError(f"{origin}: unknown key '{name}.{key}'")


def partition_from_data(partition: str) -> bool:
    """True when the client count comes from the data (one client per file or field value),
    not from --num-clients."""
    return partition == "files" or partition.startswith(BY_FIELD)


def field_sections() -> dict[str, str]:
    """Map every field name to the section that owns it."""
    return {f.name: sec for sec, cls in SECTIONS.items() for f in dataclasses.fields(cls)}


PRESET_DIR = "configs"
BASE_KEY = "base"  # a config file's top-level key naming the preset (or file) it builds on


def preset_names() -> list[str]:
    files = resources.files("fedit").joinpath(PRESET_DIR).iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".yaml"))


def is_preset(spec: str) -> bool:
    return not Path(spec).suffix and spec in preset_names()


def preset_text(name: str) -> str:
    """A preset's YAML as shipped, comments included."""
    return resources.files("fedit").joinpath(PRESET_DIR, f"{name}.yaml").read_text()


def load_config(spec: str | None, base: str | None = None) -> Config:
    """Load a preset by name (``cpu-demo``, ``paper``...) or a YAML file path; None = defaults.
    A file builds on the preset (or file) its ``base:`` names, else on ``base`` (the preset of the
    command that reads it); presets build on the fields' defaults (see :func:`config_layers`)."""
    if spec is None:
        return Config()
    layers = config_layers(spec, base)
    merged: dict[str, dict[str, Any]] = {}
    for data, origin in layers:
        check_keys(data, origin)
        for name, values in data.items():
            merged.setdefault(name, {}).update(values)
    try:
        return Config.from_dict(merged, layers[-1][1])
    except ConfigError as exc:  # a value the flag's check refuses: say which file(s) it came from
        raise ConfigError(f"{' on '.join(origin for _, origin in reversed(layers))}: {exc}") from None


def config_layers(spec: str, base: str | None = None) -> list[tuple[dict[str, Any], str]]:
    """The YAML mappings a config is made of, the root first, each with its name for messages: a
    preset on the fields' defaults, a file on its ``base:`` (a preset, or a file relative to the
    file's folder), else on ``base``. A file need not repeat what its base says."""
    layers: list[tuple[dict[str, Any], str]] = []
    seen: list[str] = []
    next_spec: str | None = spec
    while next_spec is not None:
        data, origin = _read_config(next_spec)
        key = next_spec if is_preset(next_spec) else str(Path(next_spec).resolve())
        if key in seen:
            raise ConfigError(f"{origin}: {BASE_KEY}: builds on itself ({' -> '.join([*seen, key])})")
        seen.append(key)
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a mapping of sections ({', '.join(SECTIONS)})")
        own = (data := dict(data)).pop(BASE_KEY, None)
        if own is not None and not (isinstance(own, str) and own.strip()):
            raise ConfigError(f"{origin}: {BASE_KEY}: expected a preset name ({', '.join(preset_names())}) "
                              f"or a YAML file, got {own!r}")
        layers.insert(0, (data, origin))
        if own is not None and not is_preset(own) and not is_preset(next_spec):
            own = str(Path(next_spec).parent / Path(own).expanduser())
        next_spec = own if own is not None or is_preset(next_spec) else base
    return layers


def field_origins(spec: str, base: str | None = None) -> dict[str, str]:
    """{field: the preset or file that sets it} for the fields a config sets (others keep their
    defaults); the last layer that sets a field wins."""
    return {key: origin for data, origin in config_layers(spec, base)
            for values in data.values() if isinstance(values, dict) for key in values}


def _read_config(spec: str) -> tuple[Any, str]:
    """The parsed YAML of a preset or file, and its name for error messages."""
    path = Path(spec)
    if is_preset(spec):
        text, origin = preset_text(spec), f"preset {spec}"
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
