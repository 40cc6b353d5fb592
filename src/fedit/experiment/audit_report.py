"""``fedit experiment --audit``: ``fedit audit`` on the experiment's federated run(s) and a "Privacy
audit" section added to report.md / report.html (and ``audit`` in results.json)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from fedit.audit.run import run_audit
from fedit.fileio import atomic_write_text

TITLE = "Privacy audit (fedit audit)"
HEADER = ["run", "server's view", "AUC", "TPR at 1% FPR", "accountant's epsilon", "empirical epsilon >=",
          "canary exposure (bits)"]


def audit_rows(out: Path, audits: dict[str, dict[str, Any]]) -> list[list[str]]:
    rows = []
    for run, a in audits.items():
        eps = a["accountant"]["epsilon"]
        can = a.get("canaries")
        for view, v in a["update_attack"]["views"].items():
            rows.append([run, view, f"{v['auc']:.3f}", f"{v['tpr_at_1pct_fpr']:.3f}",
                         "infinite (z = 0)" if a["accountant"].get("infinite") else
                         "none (no DP)" if eps is None else f"{eps:.3g}",
                         f"{can['epsilon_lower_bound']:.3g}" if can else "no canaries",
                         f"{can['exposure_mean']:.2f} of {can['max_exposure']:.2f}" if can else ""])
    return rows


def add_section(out: Path, audits: dict[str, dict[str, Any]]) -> None:
    """Append the section to report.md, insert it before the end of report.html, store results.json's ``audit``."""
    rows = audit_rows(out, audits)
    note = ("Membership inference by an honest-but-curious server on one client's first-round update, and "
            "canaries inserted with --audit-canaries; details in each run's audit.json and docs/privacy.md.")
    md = ["", f"## {TITLE}", "", note, "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    report = out / "report.md"
    if report.is_file():
        atomic_write_text(report, report.read_text().rstrip("\n") + "\n" + "\n".join(md) + "\n")
    page = out / "report.html"
    if page.is_file():
        table = ("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in HEADER) + "</tr></thead><tbody>"
                 + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
                 + "</tbody></table>")
        section = f"<h2>{html.escape(TITLE)}</h2><p>{html.escape(note)}</p>{table}"
        text = page.read_text()
        atomic_write_text(page, text.replace("</body></html>", section + "\n</body></html>"))
    results = out / "results.json"
    if results.is_file():
        data = json.loads(results.read_text())
        data["audit"] = audits
        atomic_write_text(results, json.dumps(data, indent=2, default=float) + "\n")


def audit_experiment(out: str | Path, **options: Any) -> dict[str, dict[str, Any]]:
    """Audit every federated run of the experiment in ``out`` (one per seed); options as run_audit's."""
    out = Path(out)
    audits = {str(cfg.parent.relative_to(out)): run_audit(cfg.parent, **options)
              for cfg in sorted(out.rglob("fedit/config.yaml"))}
    add_section(out, audits)
    return audits
