"""``fedit deploy superlink | supernode``: the long-running Flower processes of a real deployment,
in the foreground (Ctrl-C or SIGTERM to fedit stops them too, by PID)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
from pathlib import Path

from fedit.cli.deploy.common import add_home, connection_flags, flwr_home, open_control_flag
from fedit.errors import FeditError

logger = logging.getLogger(__name__)


def _foreground(procs: list[tuple[str, list[str]]], home: Path, print_only: bool, guard: bool = False) -> int:
    """Run Flower-side processes in the foreground, each once the one before it had 2 s to start
    listening (the Fleet front forwards to a listening SuperLink); when any ends, or on
    Ctrl-C/SIGTERM, all are stopped, by PID, and its exit code is returned. ``guard``: a SuperNode
    that runs fedit's app only (fedit.runners.flower.guard)."""
    import time

    from fedit.runners.flower.guard import guarded_env
    from fedit.runners.flower.launch import shell
    from fedit.runners.flower.processes import flower_env, sigterm_as_interrupt

    env = flower_env(home)
    if guard:
        env = guarded_env(env, home / "fedit-guard-bin")
    if print_only:
        path = f"PATH={home / 'fedit-guard-bin'}:$PATH " if guard else ""
        for _, argv in procs:
            print(f"FLWR_HOME={home} FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 {path}{shell(argv)}")
        return 0
    started: list[subprocess.Popen] = []
    with sigterm_as_interrupt():  # SIGTERM to fedit must reach the Flower processes too
        try:
            for name, argv in procs:
                if started:
                    time.sleep(2.0)
                logger.info("%s: %s (FLWR_HOME=%s)", name, shell(argv), home)
                started.append(subprocess.Popen(argv, env=env, start_new_session=True))
            while all(proc.poll() is None for proc in started):
                time.sleep(0.5)
            return next(proc.returncode for proc in started if proc.poll() is not None)
        except KeyboardInterrupt:
            return 130
        finally:
            for proc in started:
                _stop_foreground(proc)


def _stop_foreground(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def add_superlink(sub) -> None:
    p = sub.add_parser("superlink", help="start a SuperLink (server) and its Fleet front in the foreground")
    p.add_argument("--host", default="0.0.0.0", help="address the SuperNodes connect to: only the Fleet API is "
                                                     "served there (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9093, help="port of the Fleet API for the SuperNodes (default 9093)")
    p.add_argument("--control-port", type=int, default=9092,
                   help="port of the SuperLink's Control and runtime APIs, on 127.0.0.1 only: the operator's "
                        "fedit deploy submit/register-node use --superlink 127.0.0.1:PORT (default 9092)")
    p.add_argument("--ssl-certfile", help="server certificate (PEM)")
    p.add_argument("--ssl-keyfile", help="server private key (PEM)")
    p.add_argument("--ssl-ca-certfile", help="CA certificate that signed it (PEM)")
    p.add_argument("--insecure", action="store_true", help="no TLS (trials only; --auth needs TLS)")
    p.add_argument("--auth", action="store_true", help="accept only registered SuperNodes")
    p.add_argument("--database", help="SuperLink state file (default: in memory)")
    p.add_argument("--print-command", action="store_true", help="print the commands, do not run them")
    open_control_flag(p)
    add_home(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import LinkTls, front_command, superlink_command
        from fedit.runners.flower.local import warn_open_control_api

        files = (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile)
        if args.insecure == any(files) or (not args.insecure and not all(files)):
            raise FeditError("give --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or --insecure")
        if args.auth and args.insecure:
            raise FeditError("--auth needs TLS: Flower authenticates SuperNodes only over TLS")
        if args.control_port == args.port and not args.insecure_open_control_api:
            raise FeditError(f"--control-port {args.control_port}: must differ from --port (the Fleet front's)")
        tls = None if args.insecure else LinkTls(*(Path(f).resolve() for f in (args.ssl_ca_certfile,
                                                                              args.ssl_certfile, args.ssl_keyfile)))
        db = Path(args.database).resolve() if args.database else None
        if not args.auth:
            logger.warning("no --auth: anyone who reaches %s:%d (with the CA certificate) can join as a SuperNode, "
                           "as many times as they like (Flower's Fleet API registers any key); pass --auth and "
                           "register each data owner's key (docs/flower.md, Threat model)", args.host, args.port)
        if args.insecure_open_control_api:
            warn_open_control_api(f"{args.host}:{args.port}")
            argv = superlink_command(args.host, args.port, tls=tls, auth=args.auth, database=db)
            return _foreground([("superlink", argv)], flwr_home(args), args.print_command)
        link = superlink_command("127.0.0.1", args.control_port, tls=tls, auth=args.auth, database=db)
        front = front_command(args.host, args.port, args.control_port, tls=tls)
        return _foreground([("superlink", link), ("fleet-front", front)], flwr_home(args), args.print_command)

    p.set_defaults(func=run)


def add_supernode(sub) -> None:
    p = sub.add_parser("supernode", help="start a SuperNode (one data owner) in the foreground")
    connection_flags(p)
    p.add_argument("--data", required=True, type=Path, help="this node's .json/.jsonl file (stays here)")
    p.add_argument("--client-index", type=int, help="client index of this node (default: assigned by the "
                                                    "server); set it for parity with fedit run --partition files")
    p.add_argument("--auth-key", type=Path, help="private key (from fedit deploy keygen) when the SuperLink "
                                                 "runs with --auth")
    p.add_argument("--port", type=int, default=9094, help="local port of the node's ClientApp API (default 9094)")
    p.add_argument("--lora-rank", type=int, help="the LoRA rank this node trains, at most the run's --lora-r "
                                                 "(default: the run's; see docs/methods.md)")
    p.add_argument("--lora-targets", help="the modules this node adapts, within the run's --lora-targets: "
                                          "all-linear or a comma list (default: the run's)")
    p.add_argument("--personal-dir", type=Path, help="--personalization fedsa/dual: where this node writes its "
                                                     "personal adapter after each of its rounds (stays here)")
    p.add_argument("--print-command", action="store_true", help="print the flower-supernode command, do not run")

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import supernode_command

        if not args.data.is_file():
            logger.warning("--data %s does not exist: this node will answer every round with an error", args.data)
        if args.lora_rank is not None and args.lora_rank < 1:
            raise FeditError(f"--lora-rank {args.lora_rank}: must be at least 1")
        root = Path(args.root_certificates).resolve() if args.root_certificates else None
        argv = supernode_command(args.superlink, args.data, client_index=args.client_index, port=args.port,
                                 root_cert=root, private_key=args.auth_key.resolve() if args.auth_key else None,
                                 lora_rank=args.lora_rank, lora_targets=args.lora_targets,
                                 personal_dir=args.personal_dir)
        return _foreground([("supernode", argv)], flwr_home(args), args.print_command, guard=True)

    p.set_defaults(func=run)
