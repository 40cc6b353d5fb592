"""fp16: half precision (2 bytes/entry); relative error <= 2**-11 in the normal range."""

from __future__ import annotations

from typing import Any

from fedit.method_api import Method
from fedit.methods.codecs.common import CODEC, expect


class Codec:
    @staticmethod
    def encode(x: Any, *, share: float = 1.0, block: int = 64) -> tuple[Any, None]:
        import torch

        return x.to(torch.float16), None

    @staticmethod
    def decode(main: Any, aux: Any, shape: Any, *, block: int = 64) -> Any:
        import torch

        expect(main, torch.float16, shape)
        return main.to(torch.float32)


METHOD = Method("fp16", "codec", "half precision, 2 bytes/entry",
                order=24, capabilities=CODEC, section="communication",
                server=Codec())
