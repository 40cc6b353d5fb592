"""Lossy codecs of one update tensor (a delta from the global adapter), by codec name.

Each codec is a method (fedit.methods.codecs: fp16, bf16, int8, topk, or a plugin's); its server half
has ``encode(x, *, share, block) -> (main, aux)`` and ``decode(main, aux, shape, *, block)``: ``main``
travels under the tensor's key, ``aux`` (if any) in the update's extra arrays.
"""

from __future__ import annotations

import torch

from fedit.errors import ConfigError
from fedit.registry import method


AUX = "compress.aux"     # update.arrays key of a codec's extra tensors


def _codec(name: str):
    try:
        return method("codec", name).half("server")
    except ConfigError:
        raise ValueError(f"unknown codec {name!r}") from None


def encode(codec: str, x: torch.Tensor, *, share: float = 1.0, block: int = 64
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main, aux) of ``x`` under ``codec``."""
    return _codec(codec).encode(x.detach().to(torch.float32).contiguous(), share=share, block=block)


def decode(codec: str, main: torch.Tensor, aux: torch.Tensor | None, shape: torch.Size, *,
           block: int = 64) -> torch.Tensor:
    """The float32 tensor of ``shape`` that (main, aux) encode; ValueError if they cannot."""
    return _codec(codec).decode(main, aux, shape, block=block)
