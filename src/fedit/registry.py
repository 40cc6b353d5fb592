"""Every federated method, found the one way: Python entry points in the group ``fedit.methods``.

fedit's own methods are declared in its pyproject.toml exactly as a plugin declares its own
(``[project.entry-points."fedit.methods"] NAME = "package.module:METHOD"``), so the built-ins prove
the plugin path every day. Each entry point names a :class:`fedit.method_api.Method`; loading it
imports only its light declaration (no torch), so ``--help`` stays fast. An unknown name is refused
with the known list; a plugin that fails to load is skipped with a warning (fedit's own must load).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
from importlib.metadata import entry_points
from typing import Any

from fedit.errors import ConfigError
from fedit.method_api import KINDS, Method

logger = logging.getLogger(__name__)

GROUP = "fedit.methods"


@functools.lru_cache(maxsize=1)
def all_methods() -> tuple[Method, ...]:
    """Every registered method, in kind order (the order their halves run), fedit's own first, then by
    ``Method.order`` and name."""
    found: dict[tuple[str, str], Method] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        try:
            method = ep.load()
        except Exception as exc:  # a broken plugin must not break fedit
            if dist == "fedit":
                raise
            logger.warning("method plugin %s (%s) did not load: %s", ep.name, dist, exc)
            continue
        if not isinstance(method, Method) or method.name != ep.name:
            logger.warning("entry point %s = %s (%s) is not a fedit Method named %r: skipped", ep.name, ep.value,
                           dist, ep.name)
            continue
        key = (method.kind, method.name)
        if key in found:
            logger.warning("%s %s is registered twice (%s and %s): keeping %s", method.kind, method.name,
                           found[key].dist, dist, found[key].dist)
            continue
        found[key] = dataclasses.replace(method, dist=dist)
    return tuple(sorted(found.values(), key=lambda m: (KINDS.index(m.kind), m.dist != "fedit", m.order, m.name)))


def methods(kind: str) -> list[Method]:
    return [m for m in all_methods() if m.kind == kind]


def names(kind: str) -> tuple[str, ...]:
    return tuple(m.name for m in methods(kind))


def method(kind: str, name: str) -> Method:
    """The method ``name`` of ``kind``; ConfigError with the known names otherwise."""
    for m in methods(kind):
        if m.name == name:
            return m
    raise ConfigError(f"unknown {kind} {name!r} (known: {', '.join(names(kind))})")


def find(name: str) -> Method | None:
    """A method by name, whatever its kind (names are unique across kinds in practice)."""
    return next((m for m in all_methods() if m.name == name), None)


def load(path: str) -> Any:
    """The object a ``module:attribute`` path names."""
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


# The strategy names (kept for callers that list them).
STRATEGIES: tuple[str, ...] = names("strategy")
