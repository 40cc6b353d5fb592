"""bf16: bfloat16 bits sent as int16 (2 bytes/entry; numpy, hence Flower, has no bfloat16); relative
error <= 2**-8, the float32 exponent range (no overflow)."""

from __future__ import annotations

from typing import Any

from fedit.method_api import Method
from fedit.methods.codecs.common import CODEC, expect


class Codec:
    @staticmethod
    def encode(x: Any, *, share: float = 1.0, block: int = 64) -> tuple[Any, None]:
        import torch

        return x.to(torch.bfloat16).view(torch.int16), None

    @staticmethod
    def decode(main: Any, aux: Any, shape: Any, *, block: int = 64) -> Any:
        import torch

        expect(main, torch.int16, shape)
        return main.contiguous().view(torch.bfloat16).to(torch.float32)


METHOD = Method("bf16", "codec", "bfloat16 bits as int16, 2 bytes/entry",
                order=25, capabilities=CODEC,
                section="communication", server=Codec())
