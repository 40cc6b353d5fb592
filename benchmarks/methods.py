"""Every federated method on one fixed setting: held-out loss per round, one table and one plot.

Each system is a `fedit run` simulation on the same preset (same partition, seed, clients per round,
local steps and held-out records: equal compute), differing only in --strategy, --lora-aggregation
or --client-ranks. Two groups:

- homogeneous clients (every client trains the global rank-8 adapter): FedAvg (the paper), FedAvgM,
  FedProx, FedAdam, FedYogi, FedAdagrad, SCAFFOLD, FFA-LoRA, product-SVD (FlexLoRA);
- heterogeneous clients (--client-ranks 8,2: every other client trains rank 2): zero-pad (HetLoRA),
  product-SVD and FFA-LoRA, against the homogeneous FedAvg.

Writes methods.json, methods.md (final and best held-out loss, change against FedAvg, bytes) and
methods.png (held-out loss per round, one panel per group). Finished runs in ``--out`` are reused.
A benchmark, not a test: one seed, so differences of a few thousandths are inside the noise.

    python benchmarks/methods.py --out bench-methods                  # SmolLM2, cpu-demo-sized
    python benchmarks/methods.py --out /tmp/mb --smoke                # tiny-random, seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from simruns import Runs, base_config, final_loss, machine, write  # noqa: E402

HOMOGENEOUS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {"strategy": "fedavgm"},
    "fedprox": {"strategy": "fedprox"},
    "fedadam": {"strategy": "fedadam"},
    "fedyogi": {"strategy": "fedyogi"},
    "fedadagrad": {"strategy": "fedadagrad"},
    "scaffold": {"strategy": "scaffold"},
    "ffa": {"lora_aggregation": "ffa"},
    "product-svd": {"lora_aggregation": "product-svd"},
}
HETEROGENEOUS: dict[str, dict[str, Any]] = {
    "het zero-pad": {"client_ranks": "8,2", "lora_aggregation": "zero-pad"},
    "het product-svd": {"client_ranks": "8,2", "lora_aggregation": "product-svd"},
    "het ffa": {"client_ranks": "8,2", "lora_aggregation": "ffa"},
}


def measure(runs: Runs, groups: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for group, systems in groups.items():
        for name, overrides in systems.items():
            rounds = runs.run(name.replace(" ", "-"), overrides)
            losses = [r["eval"]["overall"]["loss"] for r in rounds]
            out[name] = {"group": group, "flags": overrides, "loss": final_loss(rounds), "best": min(losses),
                         "curve": [(r["round"], r["eval"]["overall"]["loss"]) for r in rounds],
                         "bytes_total": rounds[-1].get("bytes_down_total", 0) + rounds[-1].get("bytes_up_total", 0),
                         "lora_gap_mean": rounds[-1].get("lora_gap_mean"),
                         "seconds": sum(r.get("seconds", 0.0) for r in rounds)}
    return out


def table(res: dict[str, Any]) -> str:
    ref = res["fedavg"]["loss"]
    base = res["fedavg"]["curve"][0][1]
    lines = [f"Held-out loss before training: {base:.4f}.", "",
             "| system | flags | final held-out loss | vs FedAvg | best round's loss | MB moved | s |",
             "|---|---|---|---|---|---|---|"]
    for name, s in res.items():
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in s["flags"].items()) or "(default)"
        lines.append(f"| {name} | `{flags}` | {s['loss']:.4f} | {s['loss'] - ref:+.4f} | {s['best']:.4f} | "
                     f"{s['bytes_total'] / 1e6:.1f} | {s['seconds']:.0f} |")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    groups = ["homogeneous", "heterogeneous"]
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, group in zip(axes, groups):
        names = [n for n, s in res.items() if s["group"] == group]
        if group == "heterogeneous":
            names = ["fedavg", *names]   # the homogeneous reference
        for name in names:
            rounds, losses = zip(*res[name]["curve"])
            ax.plot(rounds, losses, marker="o", ms=3, label=name, linestyle="--" if name == "fedavg" else "-")
        ax.set_title("every client rank 8" if group == "homogeneous" else "every other client rank 2")
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("held-out response loss")
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="cpu-demo", help="preset or YAML of the runs (default cpu-demo)")
    parser.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    parser.add_argument("--only", default=None, help="comma list of systems to run (default: all)")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the test fixtures (checks the script)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    base = base_config(args.config, args.smoke, {"rounds": args.rounds} if args.rounds else {})
    groups = {"homogeneous": HOMOGENEOUS, "heterogeneous": HETEROGENEOUS}
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")} | {"fedavg"}
        groups = {g: {n: o for n, o in s.items() if n in wanted} for g, s in groups.items()}
    res = measure(Runs(base, args.out), groups)
    write(args.out, "methods", {"systems": res, "machine": machine(), "config": base.to_dict()}, table(res))
    plot(res, args.out / "methods.png")


if __name__ == "__main__":
    main()
