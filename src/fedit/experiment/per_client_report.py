"""The per-client part of the experiment's report (fedit.experiment.per_client): a table (one row
per client: held-out records, local-only, global and personalized loss, each comparison with local
as a paired-bootstrap interval, the verdict) and a plot (one point per client: local-only loss
against federated / personalized loss, with the diagonal: below it, joining helped)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedit.experiment.plots import save

Table = tuple[str, list[str], list[list[str]]]
TITLE = "Per client: its own held-out records under local-only, global and personalized adapters"
PLOT_TITLE = "Per client: local-only loss against federated loss (below the diagonal, joining helped)"


def _ci(c: dict[str, Any] | None) -> str:
    return "–" if not c else f"{c['estimate']:+.4f} [{c['low']:+.4f}, {c['high']:+.4f}]"


def per_client_table(results: dict[str, Any]) -> Table | None:
    entries = results.get("per_client")
    if not entries:
        return None
    conf = results.get("settings", {}).get("bootstrap", {}).get("confidence", 0.95)
    rows = [[str(e["client"]), str(e["records"]), f"{e['local']:.4f}", f"{e['global']:.4f}",
             "–" if e["personalized"] is None else f"{e['personalized']:.4f}",
             _ci(e.get("global_vs_local")), _ci(e.get("personalized_vs_local")), e["verdict"]] for e in entries]
    s = results.get("per_client_summary") or {}
    if s:
        worst = s["worst_client"]
        rows.append(["all", "", "", "", "", "", "",
                     f"{s['verdicts']['joining helped']}/{s['clients']} gained ({s['model']}); worst: client "
                     f"{worst['client']} ({worst['delta']:+.4f}); change {s['delta_mean']:+.4f} ± "
                     f"{0.0 if s['delta_sd'] is None else s['delta_sd']:.4f} (sd across clients)"])
    return (TITLE, ["client", "held-out records", "local-only", "global", "personalized",
                    f"global − local [{conf:.0%} CI]", f"personalized − local [{conf:.0%} CI]", "verdict"], rows)


def per_client_figure(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """``per_client.png`` (empty without per-client entries)."""
    entries = results.get("per_client")
    if not entries:
        return {}
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    local = [e["local"] for e in entries]
    series = [("global", "#d62728", "o")] + ([("personalized", "#1f77b4", "s")]
                                             if entries[0]["personalized"] is not None else [])
    values = list(local)
    for name, color, marker in series:
        ys = [e[name] for e in entries]
        values += ys
        ax.scatter(local, ys, c=color, marker=marker, label=name)
        for e, y in zip(entries, ys):
            ax.annotate(str(e["client"]), (e["local"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#7f7f7f", linestyle="--", label="no change")
    ax.set_xlabel("local-only loss on the client's held-out records")
    ax.set_ylabel("federated / personalized loss")
    ax.legend()
    fig.tight_layout()
    return {PLOT_TITLE: save(fig, out / "per_client.png")}
