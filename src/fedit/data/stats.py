"""Describe a partition: per-client category counts, the FedIT paper's Fig. 2 plot, and the
client files themselves, so every run records exactly which data each client trained on."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedit.data.loading import Example
from fedit.fileio import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)


def partition_stats(parts: Sequence[Sequence[Example]]) -> dict[str, Any]:
    """Records and records per category of every client (JSON-serialisable)."""
    categories = sorted({example.category for part in parts for example in part})
    clients = []
    for index, part in enumerate(parts):
        counts = Counter(example.category for example in part)
        clients.append({"client": index, "records": len(part),
                        "categories": {category: counts[category] for category in sorted(counts)}})
    return {"num_clients": len(parts), "categories": categories, "clients": clients}


def plot_partition(stats: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Stacked bar PNG of records per category per client (FedIT Fig. 2), legible for 3-100 clients.

    Uses a bare matplotlib ``Figure`` (Agg canvas) so no display or pyplot global state is touched.
    """
    from matplotlib.figure import Figure  # imported lazily: matplotlib is slow to import

    clients = stats["clients"]
    categories = stats["categories"]
    n = max(1, len(clients))
    fig = Figure(figsize=(min(20.0, max(6.0, 2.5 + 0.17 * n)), 4.8), layout="constrained")
    ax = fig.add_subplot()
    positions = list(range(len(clients)))
    bottom = [0] * len(clients)
    palette = _palette(len(categories))
    for color, category in zip(palette, categories):
        heights = [client["categories"].get(category, 0) for client in clients]
        ax.bar(positions, heights, bottom=bottom, width=0.8, color=color, label=category,
               edgecolor="white" if n <= 40 else "none", linewidth=0.4)
        bottom = [b + h for b, h in zip(bottom, heights)]
    step = 1 if n <= 30 else 5 if n <= 60 else 10
    ax.set_xticks(positions[::step], [str(client["client"]) for client in clients][::step], fontsize=8)
    ax.set_xlim(-0.6, len(clients) - 0.4)
    ax.set_ylim(0, max(bottom, default=0) * 1.05 or 1)  # zero-height top layers would pin the limit
    ax.set_xlabel("client")
    ax.set_ylabel("records")
    ax.set_title(f"Records per category per client ({len(clients)} clients)")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    if categories:
        ax.legend(title="category", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
                  title_fontsize=9, frameon=False, ncols=1 if len(categories) <= 20 else 2)
    target = Path(path)
    kind = "svg" if target.suffix.lower() == ".svg" else "png"   # a vector copy for papers
    atomic_write(target, lambda handle: fig.savefig(handle, format=kind, dpi=120, metadata={"Date": None} if
                                                    kind == "svg" else None))


def _palette(n: int) -> list[Any]:
    """Distinct colours: tab10 up to 10 categories, tab20 up to 20, then a sampled rainbow."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["gist_rainbow"](i / max(1, n - 1)) for i in range(n)]


def write_partition_stats(parts: Sequence[Sequence[Example]], out_dir: str | os.PathLike[str],
                          client_info: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``stats.json`` and ``categories.png`` of a partition into ``out_dir``; return the stats.
    ``client_info``: more fields per client (e.g. its LoRA rank), merged into its entry."""
    out = Path(out_dir)
    stats = partition_stats(parts)
    for entry, info in zip(stats["clients"], client_info or []):
        entry.update({k: v for k, v in info.items() if k != "client"})
    atomic_write_text(out / "stats.json", json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    plot_partition(stats, out / "categories.png")
    return stats


def write_partition(parts: Sequence[Sequence[Example]], out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``clients/client_{i:03d}.json`` (Dolly form), ``stats.json`` and ``categories.png``
    into ``out_dir`` (created if needed); return the stats. The ``clients`` folder alone is a
    valid ``--data`` for ``--partition files`` (one client per file)."""
    out = Path(out_dir)
    (out / "clients").mkdir(parents=True, exist_ok=True)
    for index, part in enumerate(parts):
        lines = ",\n".join(json.dumps(example.to_dict(), ensure_ascii=False) for example in part)
        atomic_write_text(out / "clients" / f"client_{index:03d}.json", f"[\n{lines}\n]\n" if lines else "[]\n")
    stats = write_partition_stats(parts, out)
    logger.debug("wrote %d client files, stats.json and categories.png to %s", len(parts), out)
    return stats
