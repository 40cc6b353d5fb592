"""Robust aggregation against simulated attackers: held-out loss relative to a clean FedAvg run.

For every attack (scale, sign-flip, noise, poison-responses, backdoor) with ``--attackers`` (20 %)
of the clients malicious, one run per defence (FedAvg without one, median, trimmed-mean, krum,
multi-krum, norm-bound), plus each defence without attackers (what it costs when nobody attacks).
Reports the final held-out loss relative to the clean FedAvg run (goal: the best defence within
5 % of it for every attack), the backdoor's trigger success rate, a table (robustness.md), the raw
figures (robustness.json) and a plot (robustness.png). Finished runs in ``--out`` are reused.

    python benchmarks/robustness.py --out bench-robustness                 # SmolLM2, cpu-demo-sized
    python benchmarks/robustness.py --out /tmp/rb --smoke --rounds 1 --attacks scale,backdoor \
        --defences none,median                                             # tiny-random: checks the script
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from simruns import Runs, base_config, final_loss, machine, write  # noqa: E402

ATTACKS = ("scale", "sign-flip", "noise", "poison-responses", "backdoor")
DEFENCES = ("none", "median", "trimmed-mean", "krum", "multi-krum", "norm-bound")
GOAL = 0.05


def measure(runs: Runs, attackers: float, attacks: list[str], defences: list[str]) -> dict[str, Any]:
    clean = final_loss(runs.run("clean-none", {}))
    cells: dict[str, dict[str, Any]] = {}
    for attack in ("clean", *attacks):
        for defence in defences:
            overrides = {"robust": defence}
            if attack != "clean":
                overrides.update(attack=attack, attackers=attackers)
            rounds = runs.run(f"{attack}-{defence}", overrides)
            cell = {"loss": final_loss(rounds), "relative": final_loss(rounds) / clean - 1}
            if attack == "backdoor":
                cell["trigger_success"] = rounds[-1]["eval"]["backdoor"]["trigger_success"]
            cells[f"{attack}/{defence}"] = cell
    guards = [d for d in defences if d != "none"]
    best = {a: min(guards, key=lambda d: cells[f"{a}/{d}"]["relative"]) for a in attacks} if guards else {}
    return {"clean_loss": clean, "cells": cells, "best_defence": best, "attacks": attacks, "defences": defences,
            "goal_met": {a: cells[f"{a}/{d}"]["relative"] <= GOAL for a, d in best.items()}}


def table(res: dict[str, Any]) -> str:
    cells, attacks, defences = res["cells"], res["attacks"], res["defences"]
    lines = [f"Held-out loss relative to clean FedAvg ({res['clean_loss']:.4f}); goal: best defence "
             f"within {GOAL:.0%}", "", "| attack | " + " | ".join(defences) + " | best | goal |",
             "|---" * (len(defences) + 3) + "|"]
    for attack in ("clean", *attacks):
        row = [f"{cells[f'{attack}/{d}']['relative']:+.1%}" for d in defences]
        best = res["best_defence"].get(attack, "")
        met = {True: "yes", False: "**no**"}.get(res["goal_met"].get(attack), "")
        lines.append(f"| {attack} | " + " | ".join(row) + f" | {best} | {met} |")
    if "backdoor" in attacks:
        lines += ["", "Backdoor trigger success rate (share of held-out prompts + trigger answered with the "
                  "fixed answer):", "", "| " + " | ".join(defences) + " |", "|---" * len(defences) + "|",
                  "| " + " | ".join(f"{cells[f'backdoor/{d}']['trigger_success']:.0%}" for d in defences) + " |"]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    fig = Figure(figsize=(9, 4))
    ax = fig.add_subplot()
    rows = ("clean", *res["attacks"])
    width = 0.8 / len(res["defences"])
    for j, defence in enumerate(res["defences"]):
        vals = [100 * res["cells"][f"{a}/{defence}"]["relative"] for a in rows]
        ax.bar([i + j * width for i in range(len(rows))], vals, width, label=defence)
    ax.axhline(100 * GOAL, color="k", ls="--", lw=0.8, label=f"goal (+{GOAL:.0%})")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows)
    ax.set_ylabel("held-out loss vs clean FedAvg (%)")
    ax.set_yscale("symlog", linthresh=10)    # FedAvg's damage can be orders of magnitude larger
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="cpu-demo", help="preset or YAML of the runs (default cpu-demo)")
    parser.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    parser.add_argument("--clients-per-round", type=int, default=5, help="5: Krum with f=1 needs 2f+3")
    parser.add_argument("--attackers", type=float, default=0.2)
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma list (default: all)")
    parser.add_argument("--defences", default=",".join(DEFENCES), help="comma list (default: all, none = FedAvg)")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the test fixtures (checks the script)")
    args = parser.parse_args()
    attacks, defences = args.attacks.split(","), args.defences.split(",")
    unknown = sorted(set(attacks) - set(ATTACKS)) + sorted(set(defences) - set(DEFENCES))
    if unknown:
        parser.error(f"unknown attack or defence {unknown[0]!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    extra: dict[str, Any] = {"clients_per_round": args.clients_per_round, "krum_f": 1}
    if args.rounds:
        extra["rounds"] = args.rounds
    base = base_config(args.config, args.smoke, extra)
    res = measure(Runs(base, args.out), args.attackers, attacks, defences)
    res.update(machine=machine(), config=base.to_dict(), attackers=args.attackers)
    write(args.out, "robustness", res, table(res))
    plot(res, args.out / "robustness.png")


if __name__ == "__main__":
    main()
