"""Held-out loss against cumulative bytes: FedAvg, FFA-LoRA, int8 and top-k updates, one plot.

Each system is a `fedit run` simulation on the same preset; the bytes are the round records'
(train messages down + update replies up, as Flower serializes them: fedit.comm.payload). A
system whose settings this fedit does not know (``ffa`` needs ``--lora-aggregation``) is listed
as skipped. Writes communication.json, communication.md (final loss, total MB, MB saved against
FedAvg) and communication.png (loss vs cumulative MB, one point per round). Finished runs in
``--out`` are reused.

    python benchmarks/communication.py --out bench-communication          # SmolLM2, cpu-demo-sized
    python benchmarks/communication.py --out /tmp/cb --smoke              # tiny-random, seconds
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from simruns import Runs, base_config, final_loss, machine, write  # noqa: E402

from fedit.config import field_sections  # noqa: E402

SYSTEMS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "ffa": {"lora_aggregation": "ffa"},
    "fp16": {"compress": "fp16"},
    "int8": {"compress": "int8"},
    "topk-10%": {"compress": "topk:0.1"},
    "topk-1%": {"compress": "topk:0.01"},
}


def measure(runs: Runs, only: list[str] | None = None) -> dict[str, Any]:
    known = field_sections()
    out: dict[str, Any] = {"systems": {}, "skipped": {}}
    for name, overrides in SYSTEMS.items():
        if only is not None and name not in only:
            continue
        missing = [k for k in overrides if k not in known]
        if missing:
            out["skipped"][name] = f"this fedit has no --{missing[0].replace('_', '-')}"
            continue
        rounds = runs.run(name, overrides)
        curve = [(r.get("bytes_down_total", 0) + r.get("bytes_up_total", 0), r["eval"]["overall"]["loss"])
                 for r in rounds]
        out["systems"][name] = {"loss": final_loss(rounds), "bytes_total": curve[-1][0],
                                "bytes_up_total": rounds[-1]["bytes_up_total"], "curve": curve}
    return out


def table(res: dict[str, Any]) -> str:
    systems = res["systems"]
    ref = systems.get("fedavg")
    lines = ["| system | final held-out loss | vs FedAvg | total MB | upload MB | upload vs FedAvg |",
             "|---|---|---|---|---|---|"]
    for name, s in systems.items():
        rel = f"{s['loss'] / ref['loss'] - 1:+.2%}" if ref else ""
        up = f"{s['bytes_up_total'] / ref['bytes_up_total']:.3f}x" if ref else ""
        lines.append(f"| {name} | {s['loss']:.4f} | {rel} | {s['bytes_total'] / 1e6:.2f} | "
                     f"{s['bytes_up_total'] / 1e6:.2f} | {up} |")
    lines += [f"| {name} | skipped: {why} | | | | |" for name, why in res["skipped"].items()]
    return "\n".join(lines)


def plot(res: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    for name, s in res["systems"].items():
        mb, loss = zip(*[(b / 1e6, l) for b, l in s["curve"]])
        ax.plot(mb, loss, marker="o", ms=3, label=name)
    ax.set_xlabel("cumulative communication (MB, down + up)")
    ax.set_ylabel("held-out loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--config", default="cpu-demo", help="preset or YAML of the runs (default cpu-demo)")
    parser.add_argument("--rounds", type=int, default=None, help="override the preset's rounds")
    parser.add_argument("--smoke", action="store_true", help="tiny-random on the test fixtures (checks the script)")
    parser.add_argument("--only", default=None, help=f"comma list of systems (default: all of {', '.join(SYSTEMS)})")
    args = parser.parse_args()
    only = None if args.only is None else [name.strip() for name in args.only.split(",")]
    if only is not None and not set(only) <= set(SYSTEMS):
        parser.error(f"--only: unknown systems {sorted(set(only) - set(SYSTEMS))}; choose from {', '.join(SYSTEMS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("fedit").setLevel(logging.WARNING)
    base = base_config(args.config, args.smoke, {"rounds": args.rounds} if args.rounds else {})
    res = measure(Runs(base, args.out), only)
    res.update(machine=machine(), config=base.to_dict())
    write(args.out, "communication", res, table(res))
    plot(res, args.out / "communication.png")


if __name__ == "__main__":
    main()
