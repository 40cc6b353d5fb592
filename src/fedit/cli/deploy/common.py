"""What the ``fedit deploy`` subcommands share: FLWR_HOME, the server-side and connection flags."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedit.cli.args import add_config_flags, config_help, section_from_args
from fedit.config import EXTRA_SECTIONS, DeployConfig


def flwr_home(args: argparse.Namespace) -> Path:
    return Path(args.flwr_home or os.environ.get("FLWR_HOME") or "flwr-home").expanduser().resolve()


def add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flwr-home", help="FLWR_HOME of this process: Flower's state, apps and logs "
                                       "(default: $FLWR_HOME, else ./flwr-home)")


def add_server_flags(p: argparse.ArgumentParser, required_out: bool = True) -> None:
    p.add_argument("--config", help=config_help())
    p.add_argument("--out", required=required_out, help="run directory, written by the ServerApp on the "
                                                        "SuperLink's machine")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(p, sections=EXTRA_SECTIONS)


def deploy_settings(args: argparse.Namespace):
    return section_from_args(DeployConfig, args)


def open_control_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-open-control-api", action="store_true",
                   help="serve the SuperLink's Control API on the address the SuperNodes use, as plain Flower "
                        "does: anyone reaching it with the CA certificate can submit an app that runs on the server "
                        "and on every node, or register a node. Default: only the Fleet API is served there "
                        "(fedit's Fleet front), the Control API on loopback; see docs/flower.md")


def connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    g.add_argument("--insecure", action="store_true", help="no TLS (loopback trials only)")
    add_home(p)


def echo(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
