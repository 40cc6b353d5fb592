"""topk:K: the ceil(K * n) entries of largest magnitude (float32 values + int32 indices, 8 bytes per kept
entry); the rest is zero on the wire and kept by the client as error feedback (client state)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from fedit.comm.topk import INDEX_LIMIT, topk_count
from fedit.method_api import Method
from fedit.methods.codecs.common import CODEC



class Codec:
    parameter = "K"   # --compress topk:K, K the kept share of entries in (0, 1]

    @staticmethod
    def encode(x: Any, *, share: float = 1.0, block: int = 64) -> tuple[Any, Any]:
        import torch

        flat = x.flatten()
        k = topk_count(flat.numel(), share)
        idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        dtype = torch.int32 if flat.numel() <= INDEX_LIMIT else torch.int64
        return flat[idx].clone(), idx.to(dtype)

    @staticmethod
    def decode(main: Any, aux: Any, shape: Any, *, block: int = 64) -> Any:
        import torch

        n = math.prod(shape)
        if aux is None or aux.dtype not in (torch.int32, torch.int64) or aux.dim() != 1:
            raise ValueError("expected a 1-d integer index tensor")
        if main.dtype != torch.float32 or main.shape != aux.shape:
            raise ValueError("expected float32 values, one per index")
        if aux.numel() and (int(aux.min()) < 0 or int(aux.max()) >= n):
            raise ValueError(f"an index is outside 0..{n - 1}")
        out = torch.zeros(n, dtype=torch.float32)
        out[aux.to(torch.int64)] = main
        return out.view(shape)


METHOD = Method("topk", "codec", "the share K of largest entries per tensor, with error feedback",
                order=27, capabilities=dataclasses.replace(CODEC, client_state=True), section="communication",
                server=Codec())
