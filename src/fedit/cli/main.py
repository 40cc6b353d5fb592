"""The ``fedit`` command: the dispatcher. Thin: it builds the parser from the command modules
(each ``fedit.cli.<module>.add_parser(subparsers)``) and calls the command a user chose.

User mistakes (FeditError, unreadable files) end with one line on stderr and a non-zero exit,
never a traceback; ``--debug`` (or FEDIT_DEBUG=1) shows the traceback for bug reports. Command
modules import nothing from here: what they share is in fedit.cli.args.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import typing
from typing import Any, Sequence

from fedit.cli import audit, deploy, experiment, export, methods, presets, run, use
from fedit.cli.args import EPILOG, Parser, shared_console
from fedit.errors import FeditError

logger = logging.getLogger("fedit")

# In --help order: each module adds its subcommands.
COMMAND_MODULES = (run, use, methods, experiment, deploy, export, presets, audit)


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


def build_parser() -> Parser:
    parser = Parser(prog="fedit", description="Federated instruction tuning of LLMs with LoRA.",
                    epilog=EPILOG)
    parser.add_argument("--version", action=VersionAction, help="show fedit's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMAND_MODULES:
        module.add_parser(sub)
    return parser


def setup_logging(quiet: bool) -> None:
    """Rich log lines on a terminal, plain timestamped lines otherwise (CI logs, pipes)."""
    console = shared_console()
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
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            return closed_stdout()
        return exc.code if isinstance(exc.code, int) else 2
    except BrokenPipeError:  # `fedit run --help | head`
        return closed_stdout()
    debug = args.debug or os.environ.get("FEDIT_DEBUG") == "1"
    setup_logging(args.quiet)
    try:
        code = args.func(args)
        sys.stdout.flush()   # a reader that went away (`fedit methods | head`) shows here, not at exit
        return code
    except BrokenPipeError:
        return closed_stdout()
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


def closed_stdout() -> int:
    """The reader of stdout went away (``fedit methods | head``): end quietly, as a tool killed by
    SIGPIPE does (exit 128 + 13), with stdout pointed at /dev/null so that the interpreter's last
    flush cannot fail again and print an error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


if __name__ == "__main__":
    sys.exit(main())
