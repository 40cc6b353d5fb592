"""Per-round overhead of `fedit deploy local` (real Flower processes on loopback) vs the
in-process simulation (`fedit run`) on the same job, and the start-up cost a ClientApp pays
per message with the cached base model.

    FEDIT_CACHE=~/.cache/fedit .venv/bin/python benchmarks/flower_overhead.py [--smollm2] [--json OUT]

Both runs use the same files, seed and settings (`--partition files`, one SuperNode per
file); per-round seconds come from each run's metrics.jsonl (aggregation + evaluation
included), wall seconds from the outside. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "tiny"
TEST = ROOT / "tests" / "fixtures" / "tiny_test.jsonl"
FEDIT = [sys.executable, "-m", "fedit.cli", "-q"]

JOBS = {
    "tiny-random": ["--model", "tiny-random", "--rounds", "3", "--local-steps", "3", "--batch-size", "4",
                    "--micro-batch-size", "2"],
    "smollm2-135m-instruct": ["--model", "smollm2-135m-instruct", "--rounds", "2", "--local-steps", "2",
                              "--batch-size", "4", "--micro-batch-size", "2", "--max-len", "128"],
}

CLIENT_START = """
import time, sys
t0 = time.perf_counter()
import fedit.runners.flower.client_app  # what Flower imports for every message
t1 = time.perf_counter()
from fedit.config import load_config
from fedit.runners.common import build_workbench
build_workbench(load_config("cpu-demo").override({"model": sys.argv[1]}))
t2 = time.perf_counter()
print(t1 - t0, t2 - t0)
"""


def _common() -> list[str]:
    return ["--test-data", str(TEST), "--partition", "files", "--clients-per-round", "2", "--seed", "7"]


def _rounds(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in records if r.get("type") == "round" and "seconds" in r]


def _timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(FEDIT + argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bench_job(model: str, work: Path) -> dict:
    job = JOBS[model] + _common()
    nodes = [str(p) for p in sorted(TINY.glob("client_*.json"))]
    sim_wall = _timed(["run", "--data", str(TINY), "--out", str(work / f"{model}-sim"), *job])
    dep_wall = _timed(["deploy", "local", "--node-data", *nodes, "--out", str(work / f"{model}-dep"), *job])
    sim, dep = _rounds(work / f"{model}-sim"), _rounds(work / f"{model}-dep")
    return {"model": model, "nodes": len(nodes), "clients_per_round": 2,
            "simulation": {"wall_s": sim_wall, "round_s": sim, "mean_round_s": sum(sim) / len(sim)},
            "deploy_local": {"wall_s": dep_wall, "round_s": dep, "mean_round_s": sum(dep) / len(dep)}}


def bench_client_start(model: str, repeats: int = 3) -> dict:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", CLIENT_START, model], check=True, capture_output=True,
                             text=True).stdout.split()
        runs.append((float(out[0]), float(out[1])))
    best = min(runs, key=lambda r: r[1])
    return {"model": model, "import_s": best[0], "import_and_model_s": best[1], "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smollm2", action="store_true", help="also run the SmolLM2-135M job (minutes)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "flower_overhead.json")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    models = ["tiny-random"] + (["smollm2-135m-instruct"] if args.smollm2 else [])
    with tempfile.TemporaryDirectory(prefix="fedit-flower-bench-") as tmp:
        jobs = [bench_job(m, Path(tmp)) for m in models]
    starts = [bench_client_start(m) for m in models]
    result = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}, "jobs": jobs, "client_start": starts}
    print(f"machine: {os.cpu_count()} CPU cores, {platform.platform()}")
    print(f"{'model':24} {'runner':13} {'wall s':>8} {'mean round s':>13} rounds")
    for j in jobs:
        for runner in ("simulation", "deploy_local"):
            r = j[runner]
            print(f"{j['model']:24} {runner:13} {r['wall_s']:8.1f} {r['mean_round_s']:13.1f} "
                  + " ".join(f"{s:.1f}" for s in r["round_s"]))
    print(f"{'model':24} {'ClientApp import s':>19} {'+ model load s':>15}")
    for s in starts:
        print(f"{s['model']:24} {s['import_s']:19.2f} {s['import_and_model_s']:15.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
