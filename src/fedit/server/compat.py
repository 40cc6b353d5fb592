"""Which methods combine, derived from their capabilities (fedit.method_api.Capabilities), never
from a hand-written matrix: every runner calls :func:`check_methods` before it writes anything, and
a combination that cannot work is refused in one line naming both flags.

The rules, in the order they are tried (the first that applies is the message):
  factor_state x refactors          server state per factor coordinate vs factors re-based every round
  needs_full_adapter x partial_adapter / per-client ranks or modules
  releases_only_mean x needs_each_update
  coordinatewise x (releases_only_mean | uneven adapters | refactors)
  side_aggregates x a defence that does not cover them
  decoded_by_server x hides_each_update
  not uneven_ranks_ok x uneven adapters
plus the layout rules of --client-ranks (no rank above --lora-r; ranks below it need an aggregation
that takes them; one that cannot use the extra rank wants --lora-r lowered).
"""

from __future__ import annotations

from typing import Any, Sequence

from fedit import registry
from fedit.client_lora import ClientLora, canonical_targets, listed_layouts
from fedit.errors import ConfigError
from fedit.method_api import Method

CLIENT_FLAGS = ("--client-ranks", "--client-targets")


def chosen(cfg: Any) -> list[tuple[Method, str]]:
    """The run's active methods with the flag that chose each (``--strategy fedavg``...)."""
    picks = [("strategy", cfg.federation.strategy, "--strategy"),
             ("aggregation", cfg.lora.lora_aggregation, "--lora-aggregation"),
             ("defence", cfg.robustness.robust, "--robust"), ("attack", cfg.robustness.attack, "--attack"),
             ("codec", cfg.communication.compress.partition(":")[0], "--compress")]
    out = [(registry.method(kind, name), f"{flag} {cfg.communication.compress if kind == 'codec' else name}")
           for kind, name, flag in picks if name != "none"]
    out += [(m, m.flags(cfg) if m.flags else m.name) for m in registry.methods("privacy") if m.active and m.active(cfg)]
    out += [(m, m.flags(cfg)) for m in registry.methods("personalization") if m.active and m.active(cfg)]
    return out


def _both(items: list[tuple[Method, str]], a: str, b: str) -> tuple[str, str] | None:
    """(flag with capability a, flag with capability b) of two different methods, if any."""
    for m, fa in items:
        for n, fb in items:
            if m is not n and getattr(m.capabilities, a) and getattr(n.capabilities, b):
                return fa, fb
    return None


def _alternatives(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def check_methods(cfg: Any, layouts: Sequence[ClientLora] | None = None,
                  flags: tuple[str, str] = CLIENT_FLAGS) -> None:
    """Refuse, in one line naming the flags, a combination of the run's methods and per-client adapters
    (--client-ranks/--client-targets, or the nodes' ``flags``) that cannot work. ``layouts``: the
    clients' adapters once known (default: every rank and module list the flags name)."""
    items = chosen(cfg)
    by_kind = {m.kind: (m, f) for m, f in items}
    strategy, s_flag = by_kind["strategy"]
    agg, a_flag = by_kind["aggregation"]
    if pair := _both(items, "factor_state", "refactors"):
        fits = ", ".join(m.name for m in registry.methods("strategy") if not m.capabilities.factor_state)
        raise ConfigError(f"{pair[0]} keeps server state per coordinate of the LoRA factors, which {pair[1]} "
                          f"re-factors every round: use --strategy {fits} with it, or another --lora-aggregation")
    if pair := _both(items, "needs_full_adapter", "partial_adapter"):
        raise ConfigError(f"{pair[0]} needs every client to train the whole adapter, but {pair[1]} trains only "
                          f"part of it: drop {pair[1]}")
    lora_r, targets_all = cfg.lora.lora_r, canonical_targets(cfg.lora.lora_targets)
    if layouts is None:
        ranks, targets = listed_layouts(cfg.lora.client_ranks, cfg.lora.client_targets)
    else:
        ranks, targets = [lay.rank for lay in layouts], [lay.targets for lay in layouts]
    ranks_flag, targets_flag = flags
    uneven = any(r != lora_r for r in ranks) or any(t != targets_all for t in targets)
    if pair := _both(items, "releases_only_mean", "needs_each_update"):
        if not by_kind.get("defence") or pair[1] != by_kind["defence"][1]:
            raise ConfigError(f"{pair[0]} releases only the mean of the clients' updates, but {pair[1]} needs each "
                              "client's own reply: drop one of them")
    _check_coordinatewise(items, uneven, f"{ranks_flag}/{targets_flag}")
    defence = by_kind.get("defence")
    if defence and not defence[0].capabilities.covers_side_aggregates and strategy.capabilities.side_aggregates:
        raise ConfigError(f"{defence[1]} bounds each client's adapter update but not the "
                          f"{', '.join(strategy.capabilities.side_aggregates)} that {s_flag} aggregates beside it: "
                          "drop one of them")
    if pair := _both(items, "decoded_by_server", "hides_each_update"):
        raise ConfigError(f"{pair[0]} codes each update for the server to decode, but {pair[1]} gives the server "
                          "only their masked sum: drop one of them")
    pooled = [f for m, f in items if m.kind == "privacy" and not m.capabilities.uneven_ranks_ok]
    if pooled and uneven:
        raise ConfigError(f"{pooled[0]} sums updates of one shape, but {ranks_flag}/{targets_flag} give clients "
                          "adapters of different shapes: drop one of them")
    full = strategy.capabilities.needs_full_adapter
    if any(t != targets_all for t in targets) and full:
        raise ConfigError(f"{s_flag} needs every client to train the whole adapter: it does not combine with "
                          f"{targets_flag}")
    _check_ranks(ranks, lora_r, ranks_flag, s_flag if full else None, agg, a_flag)
    _check_personal(items, uneven, f"{ranks_flag}/{targets_flag}")


def _check_personal(items: list[tuple[Method, str]], uneven: bool, layout_flags: str) -> None:
    """A personal part (fedsa's B, dual's local adapter) must not be what another method shares,
    re-factors, corrects or codes."""
    personal = next(((m, f) for m, f in items if m.kind == "personalization" and m.capabilities.client_state), None)
    if personal is None:
        return
    m, fm = personal
    for n, fn in items:
        if n is m:
            continue
        caps = n.capabilities
        why = ("trains and shares only B, which fedsa keeps at the client" if caps.partial_adapter
               else "re-factors the product B·A every round" if caps.refactors and m.name == "fedsa"
               else "keeps per-client state on the same factors" if caps.client_state
               else None)
        if why:
            raise ConfigError(f"{fm} does not combine with {fn}, which {why}: drop one of them")
    if uneven:
        raise ConfigError(f"{fm} keeps a personal part of the global adapter's layout; it does not combine with "
                          f"{layout_flags}: drop one of them")


def _check_coordinatewise(items: list[tuple[Method, str]], uneven: bool, layout_flags: str) -> None:
    """A method that compares updates coordinate by coordinate needs each one, all of one shape."""
    for m, fm in items:
        if not m.capabilities.coordinatewise:
            continue
        why = next(((f, "releases only their mean") for n, f in items if n.capabilities.releases_only_mean), None)
        why = why or ((layout_flags, "gives them different shapes") if uneven else None)
        why = why or next(((f, "needs each client's own factors and re-factors their products")
                           for n, f in items if n.capabilities.refactors), None)
        if why:
            raise ConfigError(f"{fm} compares the clients' updates coordinate by coordinate; it does not combine "
                              f"with {why[0]}, which {why[1]}: drop one of them")


def _check_ranks(ranks: list[int], lora_r: int, ranks_flag: str, full_flag: str | None, agg: Method,
                 a_flag: str) -> None:
    if not ranks:
        return
    if max(ranks) > lora_r:
        raise ConfigError(f"{ranks_flag}: rank {max(ranks)} is larger than --lora-r {lora_r} (the global adapter "
                          "has the largest rank: raise --lora-r)")
    if min(ranks) < lora_r and full_flag:
        raise ConfigError(f"{full_flag} needs every client to train the whole adapter: it does not combine with "
                          f"{ranks_flag} below --lora-r {lora_r}")
    if min(ranks) < lora_r and not agg.capabilities.uneven_ranks_ok:
        fits = [m.name for m in registry.methods("aggregation") if m.capabilities.uneven_ranks_ok]
        raise ConfigError(f"{a_flag} averages factors of one shape, but {ranks_flag} gives ranks below --lora-r "
                          f"{lora_r}: use --lora-aggregation {_alternatives(fits)}")
    if max(ranks) < lora_r and not agg.capabilities.refactors:
        raise ConfigError(f"--lora-r {lora_r} is larger than every rank of {ranks_flag} (at most {max(ranks)}): "
                          f"with {a_flag} the extra components are never trained; set --lora-r {max(ranks)}")
