"""example-fp16: a codec in one file: half precision on the wire (2 bytes per entry), decoded to float32
by the server. fedit's compression machinery calls ``encode``/``decode`` and runs the client side
(``--compress example-fp16``); a codec declares ``decoded_by_server``, so fedit refuses it with
--secure-aggregation, which gives the server only the masked sum."""

from __future__ import annotations

from typing import Any

from fedit.methods import Capabilities, Method


class Codec:
    @staticmethod
    def encode(x: Any, *, share: float = 1.0, block: int = 64) -> tuple[Any, None]:
        import torch

        return x.to(torch.float16), None

    @staticmethod
    def decode(main: Any, aux: Any, shape: Any, *, block: int = 64) -> Any:
        import torch

        if main.dtype != torch.float16 or tuple(main.shape) != tuple(shape):
            raise ValueError(f"expected float16 of shape {tuple(shape)}, got {main.dtype} {tuple(main.shape)}")
        return main.to(torch.float32)


METHOD = Method("example-fp16", "codec", "half precision on the wire (example plugin)",
                capabilities=Capabilities(decoded_by_server=True), server=Codec())
