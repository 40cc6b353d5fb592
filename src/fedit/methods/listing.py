"""``fedit methods``: every registered method as data (``--json``) or as text."""

from __future__ import annotations

import dataclasses
from typing import Any

from fedit.method_api import flag
from fedit.registry import all_methods


def describe() -> list[dict[str, Any]]:
    """One record per method: kind, name, distribution, summary, options (flag, YAML key, default,
    help), capabilities (those it declares)."""
    out = []
    for m in all_methods():
        options = [{"flag": flag(f.name), "key": f"{m.option_section}.{f.name}",
                    "default": None if f.default is dataclasses.MISSING else f.default,
                    "choices": list(f.metadata["choices"]) if f.metadata.get("choices") else None,
                    "help": f.metadata["help"]} for f in m.option_fields()]
        out.append({"kind": m.kind, "name": m.name, "distribution": m.dist, "summary": m.summary,
                    "options": options, "capabilities": m.capabilities.declared()})
    return out


def render(rows: list[dict[str, Any]]) -> str:
    lines, kind = [], None
    for row in rows:
        if row["kind"] != kind:
            kind = row["kind"]
            lines.append(f"{'' if not lines else chr(10)}{kind}:")
        origin = f"  [{row['distribution']}]"
        lines.append(f"  {row['name']:<17}{row['summary']}{origin}")
        for opt in row["options"]:
            lines.append(f"      {opt['flag']} (default {opt['default']})")
        caps = ", ".join(k if v is True else f"{k}={v}" for k, v in row["capabilities"].items())
        if caps:
            lines.append(f"      capabilities: {caps}")
    return "\n".join(lines)
