"""The report's figures as PNG files with an SVG copy beside each (vector, for a paper), drawn as
bare matplotlib Figures (Agg canvas, no pyplot state). A curve known for several seeds is drawn as
its mean with a band of ± one standard deviation over the seeds.

Relative scores are drawn as dots with their bootstrap intervals against a line at 1 (the
reference), on an axis fitted to the values: bars from 0 would flatten every difference between
scores near 1. Labels go into legends, never next to lines, so close values cannot overlap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLORS = {"base": "#7f7f7f", "centralized": "#2ca02c", "fedit": "#d62728", "reference": "#000000"}
LOCAL_COLORS = ("#1f77b4", "#9467bd", "#17becf", "#8c564b", "#bcbd22", "#e377c2")


def color(name: str) -> str:
    if name.startswith("local-") and name[6:].isdigit():
        return LOCAL_COLORS[(int(name[6:]) - 1) % len(LOCAL_COLORS)]
    return COLORS.get(name, LOCAL_COLORS[0])


def save(fig, path: Path) -> Path:
    """``path`` (PNG) and the same figure as SVG beside it (no date inside: reruns give the same file)."""
    fig.savefig(path, format="png", dpi=110)
    fig.savefig(path.with_suffix(".svg"), format="svg", metadata={"Date": None})
    return path


def curve_band(ax, curves: list[list[tuple[int, float]]], color: str, label: str, **style) -> None:
    """One curve as a line; several (one per seed) as their mean (over the points all of them have,
    at the mean x) with a ± sd band."""
    import numpy as np

    curves = [c for c in curves if c]
    if len(curves) == 1:
        ax.plot([x for x, _ in curves[0]], [y for _, y in curves[0]], color=color, label=label, **style)
        return
    n = min(len(c) for c in curves)
    xs = np.mean([[x for x, _ in c[:n]] for c in curves], axis=0)
    ys = np.array([[y for _, y in c[:n]] for c in curves], dtype=float)
    mean, sd = ys.mean(axis=0), ys.std(axis=0, ddof=1)
    ax.plot(xs, mean, color=color, label=f"{label} (mean ± sd, {len(curves)} seeds)", **style)
    ax.fill_between(xs, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)


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
        loss = (rec.get("eval") or {}).get("overall", {}).get("loss") if rec.get("type") == "round" else None
        if loss is not None:
            out[rec["round"]] = loss
    return sorted(out.items())


def _legend_right(ax) -> None:
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)


def loss_rounds_figure(rounds: list[tuple[int, float]] | list[list[tuple[int, float]]], finals: dict[str, float]):
    """FedIT's global held-out loss per round (one list per seed: a band); every other system's final
    loss (its mean over seeds) as a dashed line, named in the legend."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    per_seed = rounds if rounds and isinstance(rounds[0], list) else [rounds]
    if any(per_seed):
        curve_band(ax, per_seed, color("fedit"), "fedit (global adapter)", marker="o")
    for name, value in finals.items():
        if name != "fedit":
            ax.axhline(value, linestyle="--", linewidth=1, color=color(name), alpha=0.9,
                       label=f"{name} after training ({value:.4f})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round (0 = before training)")
    ax.set_ylabel("held-out response loss")
    ax.set_title("Global held-out loss per round")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return fig


def plot_loss_rounds(rounds: list[tuple[int, float]], finals: dict[str, float], path: Path) -> Path | None:
    if not rounds and not finals:
        return None
    return save(loss_rounds_figure(rounds, finals), path)


def relative_figure(scores: dict[str, tuple[float, float | None, float | None]], reference: str, title: str):
    """Each system's relative score (system / ``reference``) as a dot with its interval; a line
    at 1 marks the reference; the axis is fitted to the values (it does not start at 0)."""
    from matplotlib.figure import Figure

    names = list(scores)
    fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(names)), layout="constrained")
    ax = fig.add_subplot()
    lows, highs = [], []
    for i, name in enumerate(names):
        est, lo, hi = scores[name]
        lo, hi = (est if lo is None else lo), (est if hi is None else hi)
        lows.append(min(lo, est))
        highs.append(max(hi, est))
        ax.errorbar([est], [i], xerr=[[est - lo], [hi - est]], fmt="o", color=color(name), capsize=3)
        ax.annotate(f"{est:.3f}", (est, i), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=8)
    ax.axvline(1.0, color=color(reference), linestyle="--", linewidth=1, label=f"{reference} = 1")
    span = max(highs + [1.0]) - min(lows + [1.0])
    pad = max(0.05 * span, 0.01)
    ax.set_xlim(min(lows + [1.0]) - pad, max(highs + [1.0]) + pad)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"relative score: system / {reference}")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def training_figure(curves: dict[str, list[tuple[int, float]]] | dict[str, list[list[tuple[int, float]]]]):
    """Training loss of every system on one x-axis: optimizer steps (FedIT: summed over each
    round's clients, the budget centralized is given; one point per round); a system with one curve
    per seed as a band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for name, points in curves.items():
        style = {"marker": "o", "linewidth": 2} if name == "fedit" else {"linewidth": 1, "alpha": 0.85}
        curve_band(ax, points if points and isinstance(points[0], list) else [points], color(name), name, **style)
    ax.set_xlabel("optimizer steps (fedit: summed over each round's clients)")
    ax.set_ylabel("training loss (response tokens)")
    ax.set_title("Training loss of every system")
    ax.grid(alpha=0.3)
    _legend_right(ax)
    return fig


def category_figure(values: dict[str, dict[str, float]], metric: str):
    """``metric`` per category (x) for every system (one dot series each, slightly offset)."""
    from matplotlib.figure import Figure

    cats = sorted({c for v in values.values() for c in v})
    fig = Figure(figsize=(max(7.0, 1.2 * len(cats) + 2.5), 4.2), layout="constrained")
    ax = fig.add_subplot()
    width = 0.7 / max(1, len(values))
    for j, (name, per_cat) in enumerate(values.items()):
        xs = [i - 0.35 + (j + 0.5) * width for i, c in enumerate(cats) if c in per_cat]
        ax.plot(xs, [per_cat[c] for c in cats if c in per_cat], "o", color=color(name), label=name)
    ax.set_xticks(range(len(cats)), cats, rotation=20, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per category")
    ax.grid(axis="y", alpha=0.3)
    _legend_right(ax)
    return fig


def relative_title(section: dict[str, Any]) -> str:
    s = section.get("settings", {})
    return (f"judge {s.get('model')} ({s.get('prompt', 'fedit')} prompt), {section.get('questions')} "
            f"questions: relative score against {section.get('reference_label', 'FedIT')}")
