"""``fedit audit``: the parser and the command (torch-free at import); the work is fedit.audit."""

from __future__ import annotations

import argparse
from typing import Any

from fedit.errors import ConfigError

DESCRIPTION = ("Measure what a finished run leaks, next to the accountant's epsilon: a membership-inference "
               "attack by an honest-but-curious server on one client's update (as the server sees it under the "
               "run's DP, compression and secure aggregation: ROC AUC and TPR at 1% FPR), and, for a run made "
               "with --audit-canaries, the canaries' exposure and an empirical epsilon lower bound "
               "(Clopper-Pearson) from a membership test on the final adapter. Writes RUN/audit.json. "
               "See docs/privacy.md.")


def check_args(args: argparse.Namespace, canaries: bool = True) -> None:
    if args.audit_records < 2:
        raise ConfigError(f"--audit-records: must be at least 2, got {args.audit_records}")
    if canaries and args.audit_canaries is not None and args.audit_canaries < 0:
        raise ConfigError(f"--audit-canaries: must be >= 0, got {args.audit_canaries}")
    if args.audit_references < 1:
        raise ConfigError(f"--audit-references: must be at least 1, got {args.audit_references}")
    if not 0 < args.audit_confidence < 1:
        raise ConfigError(f"--audit-confidence: must be in (0, 1), got {args.audit_confidence}")


def summary_lines(result: dict[str, Any]) -> list[str]:
    """What `fedit audit` prints (the same facts as audit.json, rounded)."""
    upd = result["update_attack"]
    lines = [f"update attack on client {upd['target_client']} ({upd['members']} members, {upd['non_members']} "
             f"non-members): " + "; ".join(f"{name}: AUC {v['auc']:.3f}, TPR at 1% FPR {v['tpr_at_1pct_fpr']:.3f}"
                                          for name, v in upd["views"].items())]
    acc = result["accountant"]
    eps = ("infinite (DP with noise multiplier 0)" if acc.get("infinite") else "none (no DP)"
           if acc["epsilon"] is None else f"{acc['epsilon']:.3g} at delta {acc['delta']:g}")
    if "canaries" in result:
        c = result["canaries"]
        lines.append(f"canaries: exposure {c['exposure_mean']:.2f} bits on average (max {c['max_exposure']:.2f}; "
                     f"never-inserted ones {c['exposure_not_inserted_mean']:.2f}); empirical epsilon >= "
                     f"{c['epsilon_lower_bound']:.3g} ({c['confidence']:.0%} confidence) vs the accountant's {eps}")
    else:
        lines.append(f"accountant's epsilon: {eps} (no canaries: run with --audit-canaries K for a lower bound)")
    return lines


def cmd_audit(args: argparse.Namespace) -> int:
    check_args(args)
    from fedit.audit.run import run_audit

    result = run_audit(args.run, seed=args.audit_seed, records=args.audit_records, canaries=args.audit_canaries,
                       references=args.audit_references, confidence=args.audit_confidence)
    print("\n".join(summary_lines(result)))
    print(f"written: {args.run}/audit.json")
    return 0


def add_audit_flags(parser: argparse.ArgumentParser) -> None:
    """The audit's own flags (also `fedit experiment --audit`)."""
    parser.add_argument("--audit-seed", type=int, default=0, help="seed of the audit's choices (default: 0)")
    parser.add_argument("--audit-records", type=int, default=32,
                        help="candidate records per side of the update attack (default: 32)")
    parser.add_argument("--audit-references", type=int, default=63,
                        help="random secrets each canary is ranked against for its exposure (default: 63)")
    parser.add_argument("--audit-confidence", type=float, default=0.95,
                        help="confidence of the epsilon lower bound (default: 0.95)")


def add_parser(sub) -> None:
    aud = sub.add_parser("audit", help="measure what a run leaks: update membership attack, canaries, "
                                       "empirical epsilon lower bound", description=DESCRIPTION)
    aud.add_argument("--run", required=True, help="a fedit run directory (made by fedit run)")
    aud.add_argument("--audit-canaries", type=int, default=None,
                     help="how many of the run's inserted canaries to test (default: all it has; 0: skip them)")
    add_audit_flags(aud)
    aud.set_defaults(func=cmd_audit)
