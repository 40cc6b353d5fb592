"""What every codec shares: its capabilities, the --compress-block-size option of int8 (declared once,
here) and the shape check of a decoded tensor."""

from __future__ import annotations

from typing import Any

from fedit.method_api import Capabilities, Lazy

CODEC = Capabilities(decoded_by_server=True)


def expect(main: Any, dtype: Any, shape: Any) -> None:
    """ValueError unless ``main`` has ``dtype`` and ``shape``."""
    if main.dtype != dtype or tuple(main.shape) != tuple(shape):
        raise ValueError(f"expected {str(dtype).replace('torch.', '')} of shape {tuple(shape)}, "
                         f"got {str(main.dtype).replace('torch.', '')} of shape {tuple(main.shape)}")


def codec_client(name: str) -> Lazy:
    """The client half every codec shares, for ``name``: codes the update when a job asks for it."""
    def load() -> Any:
        from fedit.client.compress import CodecClient

        return CodecClient(name)

    return Lazy(load)
