"""``fedit deploy keygen | tls | register-node | app | submit``: one-shot operator commands."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from fedit.cli.args import add_config_flags, config_from_args
from fedit.cli.deploy.common import add_server_flags, connection_flags, deploy_settings, flwr_home
from fedit.errors import FeditError


def add_keygen(sub) -> None:
    p = sub.add_parser("keygen", help="make a SuperNode key pair: KEY (private) and KEY.pub")
    p.add_argument("key", type=Path, help="path of the private key; the public key goes to KEY.pub")

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.security import make_node_key

        if args.key.exists():
            raise FeditError(f"{args.key} exists; choose another path")
        private, public = make_node_key(args.key)
        print(json.dumps({"private_key": str(private), "public_key": str(public)}))
        return 0

    p.set_defaults(func=run)


def add_tls(sub) -> None:
    p = sub.add_parser("tls", help="make a throw-away CA + server certificate (ca.crt, server.pem, server.key)")
    p.add_argument("folder", type=Path)
    p.add_argument("--host", nargs="+", default=["localhost", "127.0.0.1"],
                   help="names/IPs the SuperLink is reached by (default localhost 127.0.0.1)")

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.security import make_tls

        files = make_tls(args.folder, args.host)
        print(json.dumps({k: str(v) for k, v in vars(files).items()}))
        return 0

    p.set_defaults(func=run)


def _flwr(args: argparse.Namespace, argv_fn) -> int:
    from fedit.runners.flower.appdir import write_connection
    from fedit.runners.flower.processes import flower_env

    from fedit.runners.flower.front import is_front

    home = flwr_home(args)
    ca = Path(args.root_certificates) if args.root_certificates else None
    if is_front(args.superlink, ca):
        raise FeditError(f"--superlink {args.superlink} is fedit's Fleet front (the data owners' address), which "
                         "does not accept runs or node registrations: run this on the SuperLink's machine with "
                         "--superlink 127.0.0.1:CONTROL_PORT (deploy superlink --control-port, default 9092) or "
                         "through an SSH tunnel to that port")
    write_connection(home, args.superlink, ca)
    return subprocess.run(argv_fn(), env=flower_env(home)).returncode


def add_register(sub) -> None:
    p = sub.add_parser("register-node", help="register a SuperNode's public key with a SuperLink")
    p.add_argument("public_key", type=Path, help="KEY.pub from fedit deploy keygen")
    p.add_argument("--name", help="a name for the node")
    connection_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import register_command

        if not args.public_key.is_file():
            raise FeditError(f"{args.public_key}: no such public key file")
        return _flwr(args, lambda: register_command(args.public_key.resolve(), args.name))

    p.set_defaults(func=run)


def _run_files(args: argparse.Namespace, cfg, folder: Path) -> tuple[Path, Path]:
    from fedit.runners.flower.appdir import write_app, write_run_config
    from fedit.runners.flower.wire import run_config_values
    from fedit.server.build import check_methods
    from fedit.server.defences import check_round_size

    check_methods(cfg)
    if cfg.federation.fraction is None:  # the round's size is known before any node connects
        check_round_size(cfg, cfg.federation.clients_per_round)
    values = run_config_values(cfg, Path(args.out), resume=args.resume, deploy=deploy_settings(args))
    return write_app(folder / "app"), write_run_config(folder / "run.toml", values)


def add_app(sub) -> None:
    p = sub.add_parser("app", help="write the Flower app folder and a run config, for flwr run by hand")
    p.add_argument("folder", type=Path, help="where to write app/pyproject.toml and run.toml")
    add_server_flags(p)
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import shell, submit_command

        app, run_toml = _run_files(args, config_from_args(args), args.folder)
        print(shell(submit_command(app, run_toml, stream=True, connection="CONNECTION")))
        return 0

    p.set_defaults(func=run)


def add_submit(sub) -> None:
    p = sub.add_parser("submit", help="submit a fedit run to a SuperLink (run directory on its machine)")
    connection_flags(p)
    add_server_flags(p)
    p.add_argument("--no-stream", action="store_true", help="return after submitting; do not follow the log")
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import submit_command

        home = flwr_home(args)
        app, run_toml = _run_files(args, config_from_args(args), home / "fedit-submit")
        return _flwr(args, lambda: submit_command(app, run_toml, stream=not args.no_stream))

    p.set_defaults(func=run)
