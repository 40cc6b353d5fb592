"""int8: blockwise absmax quantisation: blocks of --compress-block-size consecutive entries, each with
one float32 scale absmax/127; ~1 + 4/block bytes/entry; error <= scale/2 = absmax/254 per entry."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedit.method_api import Method, option, require
from fedit.methods.codecs.common import CODEC, expect


@dataclass
class Options:
    compress_block_size: int = option(64, "int8: entries per quantisation block (one float32 scale each)",
                                      client=int)

    def __post_init__(self) -> None:
        require(self.compress_block_size >= 1, "compress_block_size",
                f"must be at least 1, got {self.compress_block_size}")


def blocks(flat: Any, block: int) -> Any:
    pad = (-flat.numel()) % block
    if pad:
        import torch

        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, block)


class Codec:
    @staticmethod
    def encode(x: Any, *, share: float = 1.0, block: int = 64) -> tuple[Any, Any]:
        import torch

        rows = blocks(x.flatten(), block)
        scale = rows.abs().amax(dim=1) / 127.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(rows / safe[:, None]).clamp_(-127, 127).to(torch.int8)
        return q.flatten()[:x.numel()].view(x.shape), scale

    @staticmethod
    def decode(main: Any, aux: Any, shape: Any, *, block: int = 64) -> Any:
        import torch

        n = math.prod(shape)
        expect(main, torch.int8, shape)
        nblocks = -(-n // block)
        if aux is None or aux.dtype != torch.float32 or tuple(aux.shape) != (nblocks,):
            raise ValueError(f"expected {nblocks} float32 block scales")
        q = blocks(main.flatten().to(torch.float32), block)
        return (q * aux[:, None]).flatten()[:n].view(shape)


METHOD = Method("int8", "codec", "blockwise absmax int8, ~1 + 4/block bytes/entry",
                order=26, options=(Options,),
                capabilities=CODEC, section="communication", server=Codec())
