"""Heterogeneous clients: the LoRA rank and the adapted modules each client trains.

Torch-free (the CLI, the config and a Flower node answering the roll call use it). A client's
layout is a :class:`ClientLora`; the global adapter has the largest rank (``--lora-r``) and the
union of the modules (``--lora-targets``), and every client's adapter is a truncation of it.

Syntax (docs/methods.md, "Heterogeneous clients"):

- ``--client-ranks 8,4,2``: cycled over client ids (client 0 -> 8, 1 -> 4, 2 -> 2, 3 -> 8, ...);
  ``--client-ranks 4:0.5,8:0.3,16:0.2``: each client draws its rank with these shares, from an
  RNG of its own seeded by ``--seed`` (the draw is recorded per client in the run's stats.json).
- ``--client-targets "q_proj,v_proj;all-linear"``: the same over module lists, entries separated
  by ``;`` (a list itself has commas); ``"q_proj,v_proj:0.5;all-linear:0.5"`` draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import numpy as np

from fedit.errors import ConfigError

T = TypeVar("T")
ALL_LINEAR = "all-linear"
# Sub-seeds of the two draws (fedit.runners.common uses [seed, 1, client] and [seed, 2]).
RANK_STREAM, TARGET_STREAM = 3, 4


@dataclass(frozen=True)
class ClientLora:
    """The adapter one client trains: its rank and its modules (canonical target text)."""

    rank: int
    targets: str


@dataclass(frozen=True)
class Choices:
    """Parsed ``--client-ranks`` / ``--client-targets``: values, and shares when drawn (else cycled)."""

    values: tuple
    shares: tuple[float, ...] | None = None

    def assign(self, num_clients: int, rng: np.random.Generator) -> list:
        if self.shares is None:
            return [self.values[i % len(self.values)] for i in range(num_clients)]
        picks = rng.choice(len(self.values), size=num_clients, p=np.asarray(self.shares))
        return [self.values[int(i)] for i in picks]


def canonical_targets(text: str) -> str:
    """``all-linear`` or the module names joined by commas, without blanks or empty entries."""
    if text.strip() == ALL_LINEAR:
        return ALL_LINEAR
    return ",".join(name.strip() for name in text.split(",") if name.strip())


def _parse(text: str, flag: str, sep: str, value: Callable[[str], T]) -> Choices:
    entries = [e.strip() for e in text.split(sep)]
    if not all(entries):
        raise ConfigError(f"{flag}: {text!r} has an empty entry")
    drawn = [":" in e for e in entries]
    if any(drawn) and not all(drawn):
        raise ConfigError(f"{flag}: {text!r} gives some entries a share; give every entry one (VALUE:SHARE) "
                          "or none (cycled over clients)")
    if not any(drawn):
        return Choices(tuple(value(e) for e in entries))
    values, shares = [], []
    for entry in entries:
        head, _, share = entry.rpartition(":")
        try:
            p = float(share)
        except ValueError:
            raise ConfigError(f"{flag}: share {share!r} in {text!r} is not a number") from None
        if not p > 0:
            raise ConfigError(f"{flag}: share {share!r} in {text!r} must be positive")
        values.append(value(head))
        shares.append(p)
    if abs(sum(shares) - 1.0) > 1e-6:
        raise ConfigError(f"{flag}: the shares in {text!r} sum to {sum(shares):g}, not 1")
    if len(set(values)) != len(values):
        raise ConfigError(f"{flag}: {text!r} lists a value twice")
    return Choices(tuple(values), tuple(shares))


def _rank(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        raise ConfigError(f"--client-ranks: {text!r} is not an integer rank") from None
    if rank < 1:
        raise ConfigError(f"--client-ranks: rank {rank} must be at least 1")
    return rank


def _targets(text: str) -> str:
    targets = canonical_targets(text)
    if not targets:
        raise ConfigError(f"--client-targets: entry {text!r} names no module")
    return targets


def parse_client_ranks(text: str) -> Choices:
    """``8,4,2`` (cycled) or ``4:0.5,8:0.3,16:0.2`` (drawn); ConfigError naming the flag."""
    return _parse(text, "--client-ranks", ",", _rank)


def parse_client_targets(text: str) -> Choices:
    """``q_proj,v_proj;all-linear`` (cycled) or ``q_proj,v_proj:0.5;all-linear:0.5`` (drawn)."""
    return _parse(text, "--client-targets", ";", _targets)


def resolve_clients(lora_r: int, lora_targets: str, client_ranks: str | None, client_targets: str | None,
                    seed: int, num_clients: int) -> list[ClientLora]:
    """Every client's layout (index = client id); the global one where no flag says otherwise."""
    rng_rank = np.random.default_rng([seed, RANK_STREAM])
    rng_targets = np.random.default_rng([seed, TARGET_STREAM])
    ranks = parse_client_ranks(client_ranks).assign(num_clients, rng_rank) if client_ranks \
        else [lora_r] * num_clients
    targets = parse_client_targets(client_targets).assign(num_clients, rng_targets) if client_targets \
        else [canonical_targets(lora_targets)] * num_clients
    return [ClientLora(int(r), t) for r, t in zip(ranks, targets)]


def listed_layouts(client_ranks: str | None, client_targets: str | None) -> tuple[list[int], list[str]]:
    """Every rank and target list the flags name (whether or not a client draws it)."""
    ranks = list(parse_client_ranks(client_ranks).values) if client_ranks else []
    targets = list(parse_client_targets(client_targets).values) if client_targets else []
    return ranks, targets


def differing(layouts: Sequence[ClientLora] | dict[int, ClientLora], global_lora: ClientLora) -> dict[int, ClientLora]:
    """{client id: layout} of the clients whose adapter is not the global one."""
    items = layouts.items() if isinstance(layouts, dict) else enumerate(layouts)
    return {cid: lay for cid, lay in items if lay != global_lora}


def layout_record(layouts: Sequence[ClientLora]) -> list[dict[str, object]]:
    """Per-client rank and modules, for stats.json."""
    return [{"client": cid, "lora_rank": lay.rank, "lora_targets": lay.targets} for cid, lay in enumerate(layouts)]
