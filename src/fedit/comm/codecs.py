"""Lossy codecs of one update tensor (a delta from the global adapter): pure functions, no I/O.

Each codec turns a float32 tensor into a ``main`` tensor (same key on the wire) and, for some, an
``aux`` tensor (travelling in the update's extra arrays), and back:

* ``fp16``: half precision (2 bytes/entry); relative error <= 2**-11 in the normal range.
* ``bf16``: bfloat16 bits sent as int16 (2 bytes/entry; numpy, hence Flower, has no bfloat16);
  relative error <= 2**-8, the float32 exponent range (no overflow).
* ``int8``: blockwise absmax quantisation: blocks of ``block`` consecutive entries, each with one
  float32 scale ``absmax/127``; ~1 + 4/block bytes/entry; error <= scale/2 = absmax/254 per entry.
* ``topk``: the ``ceil(share * n)`` entries of largest magnitude (float32 values + int32 indices,
  8 bytes per kept entry); the rest is zero (the client keeps it as error feedback).
"""

from __future__ import annotations

import math

import torch

INDEX_LIMIT = 2**31 - 1


def encode(codec: str, x: torch.Tensor, *, share: float = 1.0, block: int = 64
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(main, aux) of ``x`` under ``codec``."""
    x = x.detach().to(torch.float32).contiguous()
    if codec == "fp16":
        return x.to(torch.float16), None
    if codec == "bf16":
        return x.to(torch.bfloat16).view(torch.int16), None
    if codec == "int8":
        blocks = _blocks(x.flatten(), block)
        scale = blocks.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return q.flatten()[:x.numel()].view(x.shape), scale
    if codec == "topk":
        flat = x.flatten()
        k = topk_count(flat.numel(), share)
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        dtype = torch.int32 if flat.numel() <= INDEX_LIMIT else torch.int64
        return flat[idx].clone(), idx.to(dtype)
    raise ValueError(f"unknown codec {codec!r}")


def decode(codec: str, main: torch.Tensor, aux: torch.Tensor | None, shape: torch.Size, *,
           block: int = 64) -> torch.Tensor:
    """The float32 tensor of ``shape`` that (main, aux) encode; ValueError if they cannot."""
    n = math.prod(shape)
    if codec == "fp16":
        _expect(main, torch.float16, shape)
        return main.to(torch.float32)
    if codec == "bf16":
        _expect(main, torch.int16, shape)
        return main.contiguous().view(torch.bfloat16).to(torch.float32)
    if codec == "int8":
        _expect(main, torch.int8, shape)
        nblocks = -(-n // block)
        if aux is None or aux.dtype != torch.float32 or tuple(aux.shape) != (nblocks,):
            raise ValueError(f"expected {nblocks} float32 block scales")
        q = _blocks(main.flatten().to(torch.float32), block)
        return (q * aux[:, None]).flatten()[:n].view(shape)
    if codec == "topk":
        if aux is None or aux.dtype not in (torch.int32, torch.int64) or aux.dim() != 1:
            raise ValueError("expected a 1-d integer index tensor")
        if main.dtype != torch.float32 or main.shape != aux.shape:
            raise ValueError("expected float32 values, one per index")
        if aux.numel() and (int(aux.min()) < 0 or int(aux.max()) >= n):
            raise ValueError(f"an index is outside 0..{n - 1}")
        out = torch.zeros(n, dtype=torch.float32)
        out[aux.to(torch.int64)] = main
        return out.view(shape)
    raise ValueError(f"unknown codec {codec!r}")


def topk_count(n: int, share: float) -> int:
    """Entries top-k keeps of a tensor of ``n``: ceil(share * n), at least 1."""
    return max(1, min(n, math.ceil(share * n - 1e-9)))


def _blocks(flat: torch.Tensor, block: int) -> torch.Tensor:
    pad = (-flat.numel()) % block
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


def _expect(main: torch.Tensor, dtype: torch.dtype, shape: torch.Size) -> None:
    if main.dtype != dtype or tuple(main.shape) != tuple(shape):
        raise ValueError(f"expected {str(dtype).replace('torch.', '')} of shape {tuple(shape)}, "
                         f"got {str(main.dtype).replace('torch.', '')} of shape {tuple(main.shape)}")
