"""The measured table of docs/privacy.md: one small federated run per protection, each audited.

    FEDIT_DOLLY_DIR=../shared/data/dolly/shepherd_10clients nice -n 10 \\
        .venv/bin/python benchmarks/privacy_audit.py --out bench-privacy

bench-small's model, data split and held-out records (SmolLM2-135M-Instruct, Dolly over 10 Dirichlet(0.5)
clients) with a tiny budget (2 CPU cores shared with other jobs): 1 round x 2 clients x 2 local steps of
batch 4, max length 96, at most 32 records per client, 8 held-out records, 4 canaries inserted twice each;
the audit's client trains on 8 records (2 steps of 4: each seen once), canaries ranked among 7 references.
The base model is loaded once and shared.
Prints a markdown table: accountant's epsilon, the audit's empirical epsilon lower bound and canary exposure,
the update attack's AUC and TPR at 1 % FPR (plain update and the server's view), held-out loss.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedit.audit.run import run_audit
from fedit.config import load_config
from fedit.runners.common import build_workbench
from fedit.runners.simulation import Simulation

HERE = Path(__file__).parent
DP = {"dp_clip": 0.1, "dp_noise_seed": 7}
SETTINGS = {
    "no protection": {},
    "central DP z=0.5": {**DP, "dp_noise_multiplier": 0.5},
    "central DP z=2": {**DP, "dp_noise_multiplier": 2.0},
    "local DP z=1": {**DP, "dp_noise_multiplier": 1.0, "dp_mode": "local"},
    "int8": {"compress": "int8"},
    "top-k 10%": {"compress": "topk:0.1"},
    "secure aggregation": {"secure_aggregation": True},
}
BUDGET = {"rounds": 1, "clients_per_round": 2, "local_steps": 2, "max_client_records": 32, "max_test_records": 8,
          "max_len": 96, "audit_canaries": 4, "audit_repeats": 2}
RECORDS, REFERENCES = 8, 7


def row(name: str, run: dict, audit: dict, seconds: float) -> str:
    eval_loss = [r for r in run if r.get("eval")][-1]["eval"]["overall"]["loss"]
    eps = audit["accountant"]["epsilon"]
    views = audit["update_attack"]["views"]
    seen = views[audit["update_attack"]["seen"]]
    can = audit["canaries"]
    return (f"| {name} | {'∞' if eps is None else f'{eps:.3g}'} | {can['epsilon_lower_bound']:.2f} | "
            f"{can['exposure_mean']:.2f} / {can['exposure_not_inserted_mean']:.2f} | "
            f"{audit['update_attack']['seen']} | {views['plain']['auc']:.2f} / {views['plain']['tpr_at_1pct_fpr']:.2f} | "
            f"{seen['auc']:.2f} / {seen['tpr_at_1pct_fpr']:.2f} | {eval_loss:.4f} | {seconds:.0f} s |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default=None, help="comma list of settings (default all)")
    args = parser.parse_args()
    base = load_config(str(HERE / "bench-small.yaml")).override(BUDGET)
    bench = build_workbench(base)
    lines = ["| protection | accountant ε | empirical ε ≥ | canary exposure, inserted / not (bits, max 3) | "
             "server's view | AUC / TPR@1%FPR, plain update | AUC / TPR@1%FPR, server's view | held-out loss | "
             "run + audit |", "|---|---|---|---|---|---|---|---|---|"]
    names = args.only.split(",") if args.only else list(SETTINGS)
    for name in names:
        cfg = base.override(SETTINGS[name])
        out = Path(args.out) / name.replace(" ", "_").replace("=", "").replace("%", "pct")
        start = time.perf_counter()
        result = Simulation(cfg, out, bench=bench).run()
        audit = run_audit(out, bench=bench, records=RECORDS, references=REFERENCES)
        lines.append(row(name, result.history, audit, time.perf_counter() - start))
        print(lines[-1], flush=True)
    print("\n".join(lines))
    (Path(args.out) / "table.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
