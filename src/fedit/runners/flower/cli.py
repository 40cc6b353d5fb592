"""``fedit deploy ...``: the Flower deployment path of fedit (see docs/flower.md).

  local          SuperLink + one SuperNode per --node-data file on loopback, run, stop all
  stop           stop what a killed ``deploy local`` left running (proved by PID, create time, command)
  superlink      start a SuperLink (TLS, SuperNode authentication) in the foreground
  supernode      start a SuperNode serving one data file (--data)
  keygen         make a SuperNode key pair (EC P-384, OpenSSH format)
  register-node  register a SuperNode's public key with a SuperLink
  tls            make a throw-away CA and server certificate (tests, trials)
  app            write the Flower app folder + run config, for `flwr run` by hand
  submit         submit a fedit run to a SuperLink and stream its log
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
from pathlib import Path

from fedit.config import EXTRA_SECTIONS, DeployConfig
from fedit.errors import FeditError

logger = logging.getLogger(__name__)


DESCRIPTION = """\
Run fedit on Flower: a SuperLink (server) and one SuperNode per data owner (see docs/flower.md).

  local          SuperLink + one SuperNode per --node-data file on loopback, run, stop all
  stop           stop what a killed deploy local left running on --out
  simulate       the same Flower apps under Flower's Simulation Engine (Ray): virtual nodes
  superlink      start a SuperLink (TLS, SuperNode authentication) in the foreground
  supernode      start a SuperNode serving one data file (--data)
  keygen         make a SuperNode key pair (EC P-384, OpenSSH format)
  register-node  register a SuperNode's public key with a SuperLink
  tls            make a throw-away CA and server certificate (tests, trials)
  app            write the Flower app folder and run config, for flwr run by hand
  submit         submit a fedit run to a SuperLink and stream its log
"""


def add_parser(subparsers, add_config_flags, config_from_args) -> None:
    from fedit.cli import RawDescriptionHelpFormatter

    deploy = subparsers.add_parser("deploy", help="run fedit on Flower (SuperLink/SuperNodes)",
                                   description=DESCRIPTION, formatter_class=RawDescriptionHelpFormatter)
    sub = deploy.add_subparsers(dest="deploy_command", required=True, parser_class=type(deploy))
    _local(sub, add_config_flags, config_from_args)
    _stop(sub)
    _simulate(sub, add_config_flags, config_from_args)
    _superlink(sub)
    _supernode(sub)
    _keygen(sub)
    _register(sub)
    _tls(sub)
    _app(sub, add_config_flags, config_from_args)
    _submit(sub, add_config_flags, config_from_args)


def _home(args: argparse.Namespace) -> Path:
    return Path(args.flwr_home or os.environ.get("FLWR_HOME") or "flwr-home").expanduser().resolve()


def _add_home(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flwr-home", help="FLWR_HOME of this process: Flower's state, apps and logs "
                                       "(default: $FLWR_HOME, else ./flwr-home)")


def _add_server_flags(p: argparse.ArgumentParser, add_config_flags, required_out: bool = True) -> None:
    p.add_argument("--config", help="preset or YAML file (default cpu-demo); flags override it")
    p.add_argument("--out", required=required_out, help="run directory, written by the ServerApp on the "
                                                        "SuperLink's machine")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_config_flags(p, sections=EXTRA_SECTIONS)


def _deploy(args: argparse.Namespace):
    from fedit.cli import section_from_args

    return section_from_args(DeployConfig, args)


def _open_control_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-open-control-api", action="store_true",
                   help="serve the SuperLink's Control API on the address the SuperNodes use, as plain Flower "
                        "does: anyone reaching it with the CA certificate can submit an app that runs on the server "
                        "and on every node, or register a node. Default: only the Fleet API is served there "
                        "(fedit's Fleet front), the Control API on loopback; see docs/flower.md")


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--root-certificates", help="CA certificate (PEM) that signed the SuperLink's certificate")
    g.add_argument("--insecure", action="store_true", help="no TLS (loopback trials only)")
    _add_home(p)


# ---- local -------------------------------------------------------------------------------------
def _local(sub, add_config_flags, config_from_args) -> None:
    p = sub.add_parser("local", help="a whole federation on loopback: demos and tests")
    _add_server_flags(p, add_config_flags)
    p.add_argument("--node-data", nargs="+", action="extend", required=True, type=Path, metavar="FILE",
                   help="one SuperNode per file (client index = position); repeat the flag to add more")
    p.add_argument("--tls", action="store_true", help="TLS with a throw-away CA and server certificate")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication (node keys registered; "
                                                       "needs --tls)")
    p.add_argument("--work-dir", type=Path, help="Flower state, certificates, keys, process logs "
                                                 "(default: OUT.flower next to --out)")
    _open_control_flag(p)
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        import time

        from fedit.cli import log_config
        from fedit.runners.flower.local import LocalOptions, deploy_local
        from fedit.runners.rundir import RunDir
        from fedit.runners.summary import run_summary

        cfg = config_from_args(args)
        log_config(cfg)
        opts = LocalOptions(node_data=args.node_data, tls=args.tls, auth=args.auth, deploy=_deploy(args),
                            resume=args.resume, work_dir=args.work_dir,
                            open_control_api=args.insecure_open_control_api)
        start = time.perf_counter()
        result = deploy_local(cfg, Path(args.out), opts, echo=_echo)
        history = [r for r in RunDir(result.run_dir).metrics.read() if r.get("type") == "round"]
        for line in run_summary(history, result.run_dir, time.perf_counter() - start):
            logger.info("%s", line)
        comm = result.run_dir / "communication.json"
        mb = json.loads(comm.read_text())["megabytes_total"] if comm.is_file() else None
        print(json.dumps({"run_dir": str(result.run_dir), "final_adapter": str(result.run_dir / "final"),
                          "work_dir": str(result.work_dir), "communication_mb": mb}))
        return 0

    p.set_defaults(func=run)


def _stop(sub) -> None:
    p = sub.add_parser("stop", help="stop the processes a killed deploy local left running on --out")
    p.add_argument("--out", required=True, type=Path, help="the --out of that deploy local")
    p.add_argument("--work-dir", type=Path, help="its --work-dir, if it was given (default: OUT.flower)")

    def run(args: argparse.Namespace) -> int:
        import signal

        import psutil

        from fedit.runners.flower.local import default_work_dir, registry_file
        from fedit.runners.flower.processes import running_owner, stop_leftovers

        out = args.out.resolve()
        registry = registry_file((args.work_dir or default_work_dir(out)).resolve())
        if not registry.is_file():
            raise FeditError(f"--out: no {registry} (no fedit deploy local ran with this --out/--work-dir)")
        owner = running_owner(registry)
        if owner is not None:  # still running: SIGTERM makes it stop its own processes
            logger.info("fedit deploy local (pid %d) is still running: stopping it", owner)
            try:
                proc = psutil.Process(owner)
                proc.send_signal(signal.SIGTERM)
                psutil.wait_procs([proc], timeout=60)
            except psutil.NoSuchProcess:
                pass
        stopped = stop_leftovers(registry)
        logger.info("stopped %d leftover process(es)", len(stopped))
        print(json.dumps({"owner_stopped": owner, "stopped": stopped}))
        return 0

    p.set_defaults(func=run)


def _simulate(sub, add_config_flags, config_from_args) -> None:
    p = sub.add_parser("simulate", help="the Flower app under Flower's Simulation Engine (Ray): virtual "
                                        "SuperNodes, CPUs/GPUs per client")
    _add_server_flags(p, add_config_flags)
    p.add_argument("--num-supernodes", type=int, required=True,
                   help="virtual SuperNodes; node i trains client i of the run's partition of --data")
    p.add_argument("--client-cpus", type=float, default=1.0, help="CPUs per ClientApp (Ray resource; default 1)")
    p.add_argument("--client-gpus", type=float, default=0.0,
                   help="GPUs per ClientApp (e.g. 1: one client per GPU at a time; 0.5: two; default 0)")
    p.add_argument("--work-dir", type=Path, help="Flower state and process logs (default: OUT.flower)")
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.simulation_engine import EngineOptions, simulate

        cfg = config_from_args(args)
        opts = EngineOptions(supernodes=args.num_supernodes, client_cpus=args.client_cpus,
                             client_gpus=args.client_gpus, deploy=_deploy(args), resume=args.resume,
                             work_dir=args.work_dir)
        result = simulate(cfg, Path(args.out), opts, echo=_echo)
        print(json.dumps({"run_dir": str(result.run_dir), "final_adapter": str(result.run_dir / "final"),
                          "work_dir": str(result.work_dir)}))
        return 0

    p.set_defaults(func=run)


def _echo(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


# ---- long-running processes --------------------------------------------------------------------
def _foreground(name: str, argv: list[str], home: Path, print_only: bool, guard: bool = False) -> int:
    """Run a Flower process in the foreground; Ctrl-C/SIGTERM stop it (and only it) by PID.
    ``guard``: a SuperNode that runs fedit's app only (fedit.runners.flower.guard)."""
    from fedit.runners.flower.guard import guarded_env
    from fedit.runners.flower.launch import shell
    from fedit.runners.flower.processes import flower_env, sigterm_as_interrupt

    env = flower_env(home)
    if guard:
        env = guarded_env(env, home / "fedit-guard-bin")
    if print_only:
        path = f"PATH={home / 'fedit-guard-bin'}:$PATH " if guard else ""
        print(f"FLWR_HOME={home} FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 {path}{shell(argv)}")
        return 0
    logger.info("%s: %s (FLWR_HOME=%s)", name, shell(argv), home)
    with sigterm_as_interrupt():  # SIGTERM to fedit must reach the Flower process too
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 130
        finally:
            _stop_foreground(proc)


def _foreground_pair(first: tuple[str, list[str]], second: tuple[str, list[str]], home: Path,
                     print_only: bool) -> int:
    """Two Flower-side processes in the foreground (the SuperLink, then its Fleet front once the
    SuperLink listens); when either ends, or on Ctrl-C/SIGTERM, both are stopped, by PID."""
    import time

    from fedit.runners.flower.launch import shell
    from fedit.runners.flower.processes import flower_env, sigterm_as_interrupt

    env = flower_env(home)
    if print_only:
        for _, argv in (first, second):
            print(f"FLWR_HOME={home} FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 {shell(argv)}")
        return 0
    procs: list[subprocess.Popen] = []
    with sigterm_as_interrupt():
        try:
            for name, argv in (first, second):
                logger.info("%s: %s (FLWR_HOME=%s)", name, shell(argv), home)
                procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
                time.sleep(0 if len(procs) == 2 else 2.0)   # the front forwards to a listening SuperLink
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.5)
            return next(proc.returncode for proc in procs if proc.poll() is not None)
        except KeyboardInterrupt:
            return 130
        finally:
            for proc in procs:
                _stop_foreground(proc)


def _stop_foreground(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _superlink(sub) -> None:
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
    _open_control_flag(p)
    _add_home(p)

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
        if args.insecure_open_control_api:
            warn_open_control_api(f"{args.host}:{args.port}")
            argv = superlink_command(args.host, args.port, tls=tls, auth=args.auth, database=db)
            return _foreground("superlink", argv, _home(args), args.print_command)
        link = superlink_command("127.0.0.1", args.control_port, tls=tls, auth=args.auth, database=db)
        front = front_command(args.host, args.port, args.control_port, tls=tls)
        return _foreground_pair(("superlink", link), ("fleet-front", front), _home(args), args.print_command)

    p.set_defaults(func=run)


def _supernode(sub) -> None:
    p = sub.add_parser("supernode", help="start a SuperNode (one data owner) in the foreground")
    _connection_flags(p)
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
                                 lora_rank=args.lora_rank, lora_targets=args.lora_targets)
        return _foreground("supernode", argv, _home(args), args.print_command, guard=True)

    p.set_defaults(func=run)


# ---- one-shot commands -------------------------------------------------------------------------
def _keygen(sub) -> None:
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


def _tls(sub) -> None:
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

    home = _home(args)
    write_connection(home, args.superlink, Path(args.root_certificates) if args.root_certificates else None)
    return subprocess.run(argv_fn(), env=flower_env(home)).returncode


def _register(sub) -> None:
    p = sub.add_parser("register-node", help="register a SuperNode's public key with a SuperLink")
    p.add_argument("public_key", type=Path, help="KEY.pub from fedit deploy keygen")
    p.add_argument("--name", help="a name for the node")
    _connection_flags(p)

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
    values = run_config_values(cfg, Path(args.out), resume=args.resume, deploy=_deploy(args))
    return write_app(folder / "app"), write_run_config(folder / "run.toml", values)


def _app(sub, add_config_flags, config_from_args) -> None:
    p = sub.add_parser("app", help="write the Flower app folder and a run config, for flwr run by hand")
    p.add_argument("folder", type=Path, help="where to write app/pyproject.toml and run.toml")
    _add_server_flags(p, add_config_flags)
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import shell, submit_command

        app, run_toml = _run_files(args, config_from_args(args), args.folder)
        print(shell(submit_command(app, run_toml, stream=True, connection="CONNECTION")))
        return 0

    p.set_defaults(func=run)


def _submit(sub, add_config_flags, config_from_args) -> None:
    p = sub.add_parser("submit", help="submit a fedit run to a SuperLink (run directory on its machine)")
    _connection_flags(p)
    _add_server_flags(p, add_config_flags)
    p.add_argument("--no-stream", action="store_true", help="return after submitting; do not follow the log")
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        from fedit.runners.flower.launch import submit_command

        home = _home(args)
        app, run_toml = _run_files(args, config_from_args(args), home / "fedit-submit")
        return _flwr(args, lambda: submit_command(app, run_toml, stream=not args.no_stream))

    p.set_defaults(func=run)
