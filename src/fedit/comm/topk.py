"""Top-k's arithmetic, shared by its codec (fedit.methods.codecs.topk) and whoever sizes its output."""

from __future__ import annotations

import math

INDEX_LIMIT = 2**31 - 1  # int32 indices up to here, int64 beyond


def topk_count(n: int, share: float) -> int:
    """Entries top-k keeps of a tensor of ``n``: ceil(share * n), at least 1."""
    return max(1, min(n, math.ceil(share * n - 1e-9)))
