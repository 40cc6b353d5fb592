"""What a model card may say about a base model: its Hugging Face hub id where fedit knows one,
and where its weights came from in words that name no path of the machine that trained.

A card travels with the model (to the hub, to another machine): a path like
``/home/me/.cache/fedit/models/...`` there is noise at best and a leak at worst.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedit.model.resolve import DEFAULT_MODEL, MARKER, TINY_RANDOM

# Aliases whose weights fedit knows to come from a hub model (the default is that model's Q4_1 GGUF).
KNOWN_HUB_IDS = {DEFAULT_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[\w\-][\w.\-]*/[\w\-][\w.\-]*$")
_HUB_CACHE = re.compile(r"models--(?P<org>[\w.\-]+?)--(?P<name>[\w.\-]+)/snapshots/[^/]+/?$")


def loadable_hub_id(base: str) -> str | None:
    """The hub id that loads exactly these weights: a hub id itself, or a folder of the Hugging Face
    cache (``.../models--ORG--NAME/snapshots/REV``); None for a local model."""
    match = _HUB_CACHE.search(base)
    if match:
        return f"{match['org']}/{match['name']}"
    if _HUB_ID.match(base) and not Path(base).exists():
        return base
    return None


def known_hub_id(name: str, path: str | None = None) -> str | None:
    """The hub id of the model a base came from, for a card's ``base_model``: a loadable one, or the
    hub model behind a fedit alias (its alias or its converted folder in fedit's cache); else None."""
    for value in (name, path):
        if not value:
            continue
        if value in KNOWN_HUB_IDS:
            return KNOWN_HUB_IDS[value]
        folder = Path(value)
        if folder.name in KNOWN_HUB_IDS and (folder / MARKER).is_file():
            return KNOWN_HUB_IDS[folder.name]
        hub = loadable_hub_id(value)
        if hub is not None:
            return hub
    return None


def portable(value: Any) -> str:
    """``value`` with every absolute path (comma-separated lists too) cut to its last part."""
    parts = [Path(p).name if Path(p).is_absolute() else p for p in str(value).split(",")]
    return ",".join(parts)


def weights_note(origin: dict[str, Any]) -> str:
    """Where the weights came from (a ``model_origin`` record), without a machine path."""
    name = str(origin.get("name", ""))
    if origin.get("quantization"):
        source = portable(origin.get("source") or "unknown file")
        return f"{origin['quantization']} GGUF {source}, dequantized to float32"
    if name == TINY_RANDOM:
        return "tiny-random: a random 2-layer Llama with the SmolLM2 tokenizer, for tests"
    if loadable_hub_id(name):
        return f"{name} from the Hugging Face hub"
    return f"a local model folder named {portable(origin.get('path') or name)}"
