"""Canary records for the privacy audit: made, inserted into clients' data, recorded in the run.

Each canary is a record whose response holds a random secret: "The secret code of <name> is
d d d d d d d d d." (nine random digits, spaced so each is its own token). ``2K`` canaries are
drawn from the run's seed; K of them, chosen at random, are inserted ``--audit-repeats`` times
each, spread over the clients (round-robin over a seeded permutation); the other K are never
trained on and serve as the membership test's non-members. ``canaries.json`` in the run directory
records all of them (it holds the secrets: keep it private, like ``checkpoints/``).
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedit.data import Example
from fedit.errors import ConfigError
from fedit.fileio import atomic_write_text

CANARIES_FILE = "canaries.json"
DIGITS = 9
CATEGORY = "canary"


def secret_text(name: str, digits: Sequence[int]) -> str:
    return f"The secret code of {name} is {' '.join(str(d) for d in digits)}."


def canary_record(name: str, digits: Sequence[int]) -> Example:
    return Example(f"What is the secret code of {name}?", "", secret_text(name, digits), CATEGORY)


def draw_canaries(count: int, seed: int) -> list[dict[str, Any]]:
    """``2 * count`` canaries (name, digits, inserted or not) from a seeded RNG of their own."""
    rng = np.random.default_rng([seed, 0xCA4A])
    letters = np.array(list(string.ascii_lowercase))
    inserted = set(rng.choice(2 * count, size=count, replace=False).tolist())
    return [{"name": "".join(rng.choice(letters, 8)).capitalize(), "digits": rng.integers(0, 10, DIGITS).tolist(),
             "inserted": i in inserted} for i in range(2 * count)]


def insert_canaries(clients: Sequence[list[Example]], count: int, repeats: int, seed: int,
                    run_dir: Path) -> list[list[Example]]:
    """The clients' records with the inserted canaries added; ``canaries.json`` written."""
    if count <= 0:
        return list(clients)
    canaries = draw_canaries(count, seed)
    order = np.random.default_rng([seed, 0xCA4B]).permutation(len(clients)).tolist()
    out = [list(c) for c in clients]
    members = [c for c in canaries if c["inserted"]]
    for i, canary in enumerate(members):
        canary["client"] = order[i % len(order)]
        out[canary["client"]].extend([canary_record(canary["name"], canary["digits"])] * repeats)
    record = {"count": count, "repeats": repeats, "seed": seed, "digits": DIGITS,
              "format": secret_text("<name>", ["d"] * DIGITS), "canaries": canaries}
    atomic_write_text(run_dir / CANARIES_FILE, json.dumps(record, indent=2) + "\n")
    return out


def read_canaries(run_dir: Path) -> dict[str, Any]:
    """``canaries.json`` of a run (ConfigError naming --audit-canaries when the run has none)."""
    path = Path(run_dir) / CANARIES_FILE
    if not path.is_file():
        raise ConfigError(f"--audit-canaries: the run {run_dir} inserted no canaries (run it with "
                          "--audit-canaries K to audit the released adapter with them)")
    return json.loads(path.read_text())
