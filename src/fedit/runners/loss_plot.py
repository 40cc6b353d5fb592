"""``loss.png`` of a run: held-out loss and (client-weighted) training loss per round."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

from fedit.fileio import atomic_write


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def plot_loss(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> bool:
    """Draw the round records' losses into ``path`` (PNG); False when there is nothing to draw.

    A bare matplotlib ``Figure`` (Agg canvas), as fedit.data.stats does: no pyplot global state.
    """
    rounds = [r for r in records if r.get("type") == "round"]
    held = [(r["round"], r["eval"]["overall"]["loss"]) for r in rounds
            if _finite(((r.get("eval") or {}).get("overall") or {}).get("loss"))]
    train = [(r["round"], r["train_loss"]) for r in rounds if _finite(r.get("train_loss"))]
    if not held and not train:
        return False
    from matplotlib.figure import Figure  # imported lazily: matplotlib is slow to import

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for points, label, style in ((held, "held-out loss", "o-"), (train, "train loss (clients, weighted)", "s--")):
        if points:
            ax.plot(*zip(*points), style, label=label, markersize=4)
    last = max(r for r, _ in held + train)
    if last <= 30:
        ax.set_xticks(range(0, last + 1, 1 if last <= 15 else 2))
    ax.set_xlabel("round")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title("Loss per round")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=120))
    return True
