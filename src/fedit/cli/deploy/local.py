"""``fedit deploy local | stop | simulate``: whole federations on one machine."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fedit.cli.args import add_config_flags, config_from_args, config_source, log_config
from fedit.cli.deploy.common import add_server_flags, deploy_settings, echo, open_control_flag
from fedit.errors import FeditError

logger = logging.getLogger(__name__)


def add_local(sub) -> None:
    p = sub.add_parser("local", help="a whole federation on loopback: demos and tests")
    add_server_flags(p)
    p.add_argument("--node-data", nargs="+", action="extend", required=True, type=Path, metavar="FILE",
                   help="one SuperNode per file (client index = position); repeat the flag to add more")
    p.add_argument("--tls", action="store_true", help="TLS with a throw-away CA and server certificate")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication (node keys registered; "
                                                       "needs --tls)")
    p.add_argument("--work-dir", type=Path, help="Flower state, certificates, keys, process logs "
                                                 "(default: OUT.flower next to --out)")
    open_control_flag(p)
    add_config_flags(p)

    def run(args: argparse.Namespace) -> int:
        import time

        from fedit.runners.flower.local import LocalOptions, deploy_local
        from fedit.runners.rundir import RunDir
        from fedit.runners.summary import run_summary

        cfg = config_from_args(args)
        log_config(cfg, config_source(args))
        opts = LocalOptions(node_data=args.node_data, tls=args.tls, auth=args.auth, deploy=deploy_settings(args),
                            resume=args.resume, work_dir=args.work_dir,
                            open_control_api=args.insecure_open_control_api)
        start = time.perf_counter()
        result = deploy_local(cfg, Path(args.out), opts, echo=echo)
        history = [r for r in RunDir(result.run_dir).metrics.read() if r.get("type") == "round"]
        for line in run_summary(history, result.run_dir, time.perf_counter() - start):
            logger.info("%s", line)
        comm = result.run_dir / "communication.json"
        mb = json.loads(comm.read_text())["megabytes_total"] if comm.is_file() else None
        print(json.dumps({"run_dir": str(result.run_dir), "final_adapter": str(result.run_dir / "final"),
                          "work_dir": str(result.work_dir), "communication_mb": mb}))
        return 0

    p.set_defaults(func=run)


def add_stop(sub) -> None:
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


def add_simulate(sub) -> None:
    p = sub.add_parser("simulate", help="the Flower app under Flower's Simulation Engine (Ray): virtual "
                                        "SuperNodes, CPUs/GPUs per client")
    add_server_flags(p)
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
                             client_gpus=args.client_gpus, deploy=deploy_settings(args), resume=args.resume,
                             work_dir=args.work_dir)
        result = simulate(cfg, Path(args.out), opts, echo=echo)
        print(json.dumps({"run_dir": str(result.run_dir), "final_adapter": str(result.run_dir / "final"),
                          "work_dir": str(result.work_dir)}))
        return 0

    p.set_defaults(func=run)


def _echo(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)
