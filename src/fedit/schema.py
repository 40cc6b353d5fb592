"""Config sections as typed dataclasses, composed from the run's own fields and the methods' options.

A section (``federation``, ``privacy``...) is a dataclass: the run's own fields, declared in
fedit.config, plus the options of every registered method whose ``Method.section`` is that section
(fedit.registry). Each field has one default and one help (:func:`fedit.method_api.option`); the
CLI flags, the YAML keys and the Flower run config all come from it. A kind whose methods are chosen
by name has a selector field (``--strategy``, ``--robust``...) whose choices are the registered names.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from fedit import registry
from fedit.method_api import Method, flag, option, require

__all__ = ["Section", "compose", "flag", "option", "option_groups", "require", "selector"]


class Section:
    """Shared behaviour: type checking of fields (YAML and flags feed arbitrary values)."""

    def _check_types(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            args = typing.get_args(hint)
            allowed = tuple(a for a in args if a is not type(None)) if args else (hint,)
            if value is None and type(None) in args:
                continue
            if float in allowed and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            if isinstance(value, bool) and bool not in allowed:
                ok = False
            else:
                ok = isinstance(value, allowed)
            names = "/".join(a.__name__ for a in allowed)
            require(ok, f.name, f"expected {names}, got {value!r}")
            if isinstance(value, float):  # inf/nan pass every comparison-based check below
                require(math.isfinite(value), f.name, f"must be a finite number, got {value}")
            choices = f.metadata.get("choices")
            if choices:
                require(value in choices, f.name, f"{value!r} is not one of {', '.join(choices)}")

    def __post_init__(self) -> None:
        self._check_types()
        self._check_options()

    def _check_options(self) -> None:
        """Each method's options class validates its own fields (its ``__post_init__``)."""
        for cls in getattr(type(self), "option_classes", ()):
            cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})


def selector(kind: str, default: str, help: str, *, none: bool = False, choices: bool = True) -> Any:
    """The field that chooses a method of ``kind`` by name (``none``: also "none", the default off)."""
    names = (("none",) if none else ()) + registry.names(kind)
    listed = "; ".join(f"{m.name}: {m.summary}" for m in registry.methods(kind))
    return option(default, f"{help} ({listed}; see fedit methods)", names if choices else None)


def option_classes(section: str) -> list[type]:
    """The options classes of the methods that keep their options in ``section``, once each."""
    out: list[type] = []
    for m in registry.all_methods():
        if m.option_section == section:
            out.extend(cls for cls in m.options if cls not in out)
    return out


def method_sections() -> list[str]:
    """Sections that only methods define (a plugin's own), in registry order."""
    out: list[str] = []
    for m in registry.all_methods():
        if m.options and m.option_section not in out:
            out.append(m.option_section)
    return out


def compose(section: str, own: type) -> type:
    """``own`` (a dataclass of the run's own fields, a :class:`Section`) with the fields of every
    method options class of ``section`` appended; it keeps ``own``'s name and validation."""
    classes = option_classes(section)
    taken = {f.name for f in dataclasses.fields(own)}
    fields = []
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in taken:
                raise ValueError(f"option {f.name!r} of {cls.__module__} clashes with another field of section "
                                 f"{section!r}")
            taken.add(f.name)
            fields.append((f.name, hints[f.name], dataclasses.field(default=f.default, metadata=f.metadata)))
    new = dataclasses.make_dataclass(own.__name__, fields, bases=(own,), namespace={"option_classes": tuple(classes)})
    new.__module__, new.__qualname__, new.__doc__ = own.__module__, own.__qualname__, own.__doc__
    return new


def option_groups(sections: dict[str, type]) -> list[tuple[str, list[dataclasses.Field], type]]:
    """(title, fields, section class) of every ``--help`` group: each section's own fields, then one
    group per options class, titled by the methods that use it (``strategy fedadam, fedyogi options``)."""
    users: dict[type, list[Method]] = {}
    for m in registry.all_methods():
        for cls in m.options:
            users.setdefault(cls, []).append(m)
    groups = []
    for name, cls in sections.items():
        classes = getattr(cls, "option_classes", ())
        from_methods = {f.name for c in classes for f in dataclasses.fields(c)}
        own = [f for f in dataclasses.fields(cls) if f.name not in from_methods]
        if own:
            groups.append((f"{name} options", own, cls))
        for c in classes:
            ms = users.get(c, [])
            kinds = sorted({m.kind for m in ms}, key=lambda k: [m.kind for m in ms].index(k))
            title = " / ".join(f"{k} {', '.join(m.name for m in ms if m.kind == k)}" for k in kinds)
            groups.append((f"{title} options", list(dataclasses.fields(c)), cls))
    return groups
