"""``fedit run`` (a federated job simulated in this process) and ``fedit partition``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from fedit.cli.args import (EPILOG, add_config_flags, config_from_args, config_help, config_source, log_config,
                            progress)
from fedit.errors import FeditError

logger = logging.getLogger("fedit")


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
    log_config(cfg, config_source(args, base=None if base is None else str(Path(args.out) / "config.yaml")))
    start = time.perf_counter()
    with progress() as bars:
        result = run_simulation(cfg, args.out, resume=args.resume, progress=bars)
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

    cfg = config_from_args(args, samples=False)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise FeditError(f"--out: {out} exists and is not empty; choose another --out")
    clients = load_clients(cfg)
    stats = write_partition(clients, out)
    logger.info("wrote %d client files, stats.json and categories.png to %s", len(clients), out)
    print(json.dumps({"out": str(out), "clients": [c["records"] for c in stats["clients"]]}))
    return 0


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run (or resume) a federated job in this process",
                         description="Federated LoRA instruction tuning, simulated in one process.",
                         epilog=EPILOG)
    run.add_argument("--config", help=config_help())
    run.add_argument("--out", required=True, help="run directory (config.yaml, metrics.jsonl, "
                                                  "checkpoints/, final/)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                                                           "last complete round")
    add_config_flags(run)
    run.set_defaults(func=cmd_run)

    part = sub.add_parser("partition", help="split a dataset over clients and write the client files",
                          epilog=EPILOG)
    part.add_argument("--config", help=config_help())
    part.add_argument("--out", required=True, help="folder for client_NNN.json, stats.json, categories.png")
    add_config_flags(part, ["data", "partition", "num_clients", "alpha", "min_client_size",
                            "shards_per_client", "max_client_records", "seed", "columns"])
    part.set_defaults(func=cmd_partition)
