"""What a federated method declares: name, kind, summary, options, capabilities, server and client half.

A method is one module holding one :class:`Method`, found through the ``fedit.methods`` entry-point
group (fedit's own are declared in its pyproject.toml, a plugin's in its own): see fedit.registry.
Its options are a dataclass whose fields carry default, help and choices (:func:`option`); they
become the method's CLI flags (an argument group of their own), the keys of its YAML section and,
with the rest of the config, the Flower run config. ``Method.section`` names that section: the
built-ins keep the sections fedit has always written (``privacy``, ``robustness``...), so old run
folders still load; a plugin's section is its own name by default.

This module, and every method module at import time, stays light (no torch): the CLI reads every
method's options to build ``--help``. A method's halves import their maths when they run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from fedit.errors import ConfigError

# Kinds in the order their halves run: server wrappers innermost first (personalization, privacy, defence,
# codec around the strategy), client transforms after local training (strategy, personalization: the
# personal part is taken out first, privacy, attack, codec).
KINDS = ("strategy", "aggregation", "personalization", "privacy", "defence", "attack", "codec")


def flag(name: str) -> str:
    """The CLI flag of a config field (``lora_r`` -> ``--lora-r``)."""
    return "--" + name.replace("_", "-")


def require(cond: bool, name: str, msg: str) -> None:
    """ConfigError naming the flag of field ``name`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{flag(name)}: {msg}")


def option(default: Any, help: str, choices: tuple[str, ...] | None = None, *, client: type | None = None) -> Any:
    """A config field: its default, its help and choices, once. ``client``: the field also travels
    to the clients under its own name in every job's client config, as this type."""
    return field(default=default, metadata={"help": help, "choices": choices, "client": client})


@dataclass(frozen=True)
class Capabilities:
    """What a combination of methods needs to know of one (fedit.server.compat derives the refusals)."""

    needs_each_update: bool = False      # reads every client's own reply (a median, SCAFFOLD's variates)
    coordinatewise: bool = False         # compares the clients' updates coordinate by coordinate
    releases_only_mean: bool = False     # the aggregation sees only the clients' (noised or masked) mean
    hides_each_update: bool = False      # the server never receives an individual update (secure sums)
    decoded_by_server: bool = False      # each update is coded for the server to decode
    factor_state: bool = False           # keeps server state per coordinate of the LoRA factors
    refactors: bool = False              # re-factors the adapter every round (no stable coordinates)
    needs_full_adapter: bool = False     # every client must train the whole global adapter
    partial_adapter: bool = False        # clients train and send only part of the adapter (ffa: B)
    uneven_ranks_ok: bool = True         # combines clients whose adapters differ in rank or modules
    client_state: bool = False           # keeps state on the client between its rounds
    side_aggregates: tuple[str, ...] = ()  # update arrays aggregated beside the adapter
    covers_side_aggregates: bool = True  # a defence: its rule also governs those arrays
    exact: bool | None = None            # the aggregate is the exact mean of the clients' B·A
    simulation_only: bool = False        # exists only in `fedit run` (simulated attackers)

    def declared(self) -> dict[str, Any]:
        """The capabilities that differ from the defaults (what ``fedit methods`` prints)."""
        default = Capabilities()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


@dataclass(frozen=True)
class ClientKey:
    """A key of a job's client config: its type and what it means."""

    type: type
    help: str


@dataclass(frozen=True)
class Method:
    """One federated method. ``server``/``client``: its halves, objects or zero-argument callables
    that return them (so that declaring a method imports nothing heavy):

    - strategy: ``server`` is the Strategy class, built with its options' fields as keyword arguments;
    - aggregation, defence, codec: ``server`` is the object the kind's generic machinery calls
      (fedit.server.lora_aggregate, fedit.server.defences, fedit.server.compression);
    - privacy: ``server`` wraps a strategy, ``wrap(strategy, cfg) -> Strategy``;
    - ``client``: an object with ``correction(job, device, state)`` and/or ``transform(update, job,
      state)``, each reading its own keys of the job's client config.
    """

    name: str
    kind: str
    summary: str
    options: tuple[type, ...] = ()
    capabilities: Capabilities = Capabilities()
    section: str | None = None           # YAML section of its options (default: its name)
    server: Any = None
    client: Any = None
    client_keys: Mapping[str, ClientKey] = field(default_factory=dict)  # keys beyond its options'
    active: Callable[[Any], bool] | None = None   # privacy: is it on in this config (default: selected)
    flags: Callable[[Any], str] | None = None     # the flag(s) that turned it on, for refusals
    check: Callable[[Any, int], None] | None = None  # (cfg, clients per round): refuse settings early
    defaults: Mapping[str, Any] = field(default_factory=dict)  # its own default of a shared option
    order: int = 1000                    # its place among its kind in listings, choices and --help
    dist: str = "fedit"                  # the distribution it comes from (set by the registry)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: unknown kind {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def option_section(self) -> str:
        return self.section or self.name.replace("-", "_")

    def option_fields(self) -> list[dataclasses.Field]:
        return [f for cls in self.options for f in dataclasses.fields(cls)]

    def all_client_keys(self) -> dict[str, ClientKey]:
        """Every client-config key this method sends: its options marked ``client=`` and its own."""
        keys = {f.name: ClientKey(f.metadata["client"], f.metadata["help"])
                for f in self.option_fields() if f.metadata.get("client")}
        return {**keys, **self.client_keys}

    def half(self, which: str) -> Any:
        """The server or client half, loaded (a :class:`Lazy` one is imported here)."""
        value = getattr(self, which)
        return value() if isinstance(value, Lazy) else value


@dataclass(frozen=True)
class Lazy:
    """A half given as ``module:attribute`` or a zero-argument factory, loaded when first used (the
    halves import torch; declaring a method must not)."""

    target: str | Callable[[], Any]

    def __call__(self) -> Any:
        if callable(self.target):
            return self.target()
        import importlib

        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)
