"""The report's figures as PNG files (bare matplotlib Figures on the Agg canvas, no pyplot state):
held-out loss per round of the federated run against the other systems' final loss, and the
relative scores of every system against FedIT (the paper's Fig. 3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLORS = {"base": "#7f7f7f", "centralized": "#2ca02c", "fedit": "#d62728"}
LOCAL_COLOR = "#1f77b4"


def _color(name: str) -> str:
    return COLORS.get(name, LOCAL_COLOR)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=110)
    return path


def fedit_rounds(metrics_file: Path) -> list[tuple[int, float]]:
    """(round, global held-out loss) of every evaluated round of a fedit run's metrics.jsonl."""
    if not metrics_file.is_file():
        return []
    out = {}
    for line in metrics_file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        loss = rec.get("eval", {}).get("overall", {}).get("loss") if rec.get("type") == "round" else None
        if loss is not None:
            out[rec["round"]] = loss
    return sorted(out.items())


def plot_loss_rounds(rounds: list[tuple[int, float]], finals: dict[str, float], path: Path) -> Path | None:
    """FedIT's global held-out loss per round, with every other system's loss as a dashed line."""
    from matplotlib.figure import Figure

    if not rounds and not finals:
        return None
    fig = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    if rounds:
        ax.plot([r for r, _ in rounds], [v for _, v in rounds], marker="o", color=_color("fedit"),
                label="fedit (global adapter)")
    for name, value in finals.items():
        if name != "fedit":
            ax.axhline(value, linestyle="--", linewidth=1, color=_color(name), alpha=0.8)
            ax.annotate(name, (1.0, value), xycoords=("axes fraction", "data"), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=8, color=_color(name))
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("held-out response loss")
    ax.set_title("Global held-out loss per round (dashed: other systems after training)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_relative(scores: dict[str, float], label: str, path: Path) -> Path | None:
    """Bars of each system's score relative to FedIT (FedIT = 1)."""
    from matplotlib.figure import Figure

    if not scores:
        return None
    names = list(scores)
    fig = Figure(figsize=(max(5.0, 1.0 + 0.9 * len(names)), 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(names, [scores[n] for n in names], color=[_color(n) for n in names])
    ax.axhline(1.0, color=_color("fedit"), linestyle="--", linewidth=1, label="fedit = 1")
    for i, n in enumerate(names):
        ax.annotate(f"{scores[n]:.2f}", (i, scores[n]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(label)
    ax.set_title(f"Relative score against FedIT ({label})")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8)
    return _save(fig, path)


def relative_scores(results: dict[str, Any]) -> tuple[dict[str, float], str]:
    """system -> score relative to FedIT: the judge's total ratio when judged, else ROUGE-L ratio."""
    pairs = results.get("judge", {}).get("pairs", {})
    if pairs:
        out = {"fedit": 1.0}
        out.update({n: p["total_b"] / p["total_a"] for n, p in pairs.items() if p.get("total_a")})
        return out, "judge score / FedIT's"
    systems = results["systems"]
    ref = systems.get("fedit", {}).get("overall", {}).get("rouge_l")
    if not ref:
        return {}, ""
    return ({n: s["overall"]["rouge_l"] / ref for n, s in systems.items() if "rouge_l" in s["overall"]},
            "ROUGE-L / FedIT's")
