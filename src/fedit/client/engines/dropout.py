"""LoRA dropout for the fused kernel: counter-based masks per example, applied without float masks.

One PCG64 stream per example, seeded with (client seed, the example's position in the client's
plan), gives every mask of that example in forward order, 2 mask elements per 64 random bits: the
masks depend neither on the micro-batch nor on which other clients share the pass, and cost a
fraction of torch's CPU ``bernoulli_`` (which runs on one thread on AMD CPUs). An element is
dropped when its 32 random bits are below ``round(p * 2**32)``: p to within 2.4e-10.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class DropoutStreams:
    """Keep-masks for a packed batch: one PCG64 stream per example, drawn in forward order."""

    def __init__(self, seeds: Sequence[int], bounds: Sequence[tuple[int, int]]) -> None:
        self.bounds = list(bounds)
        self.streams = [np.random.PCG64(np.random.SeedSequence(list(seed))) for seed in seeds]
        self.tokens = bounds[-1][1] if bounds else 0

    def drop(self, width: int, p: float) -> torch.Tensor:
        """A [tokens, width] bool mask of the dropped elements: True with probability p, independently."""
        threshold = np.uint32(min(round(p * 2 ** 32), 2 ** 32 - 1))
        out = np.empty((self.tokens, width), dtype=np.bool_)
        for stream, (start, end) in zip(self.streams, self.bounds):
            n = (end - start) * width
            bits = stream.random_raw((n + 1) // 2).view(np.uint32)[:n]
            np.less(bits, threshold, out=out[start:end].reshape(-1))
        return torch.from_numpy(out)


class DroppedLinear(torch.autograd.Function):
    """``x.masked_fill(drop, 0) @ a.T``, the LoRA A matmul of a dropped-out input, saving only the
    masked input and the bool mask (no float mask, no zero tensors). Under autocast it computes in
    the autocast dtype, as ``F.linear`` would."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, drop: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        kind = x.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else a.dtype
        ctx.dtypes = (x.dtype, a.dtype)
        with torch.autocast(kind, enabled=False):
            xm = x.to(dtype).masked_fill(drop, 0.0)
            ac = a.to(dtype)
            ctx.save_for_backward(xm, drop, ac)
            return xm @ ac.t()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        xm, drop, ac = ctx.saved_tensors
        grad = grad.to(xm.dtype)
        grad_x = (grad @ ac).masked_fill_(drop, 0.0).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        grad_a = (grad.t() @ xm).to(ctx.dtypes[1]) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_a
