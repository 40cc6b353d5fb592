"""Secure aggregation (SecAgg+, Bell et al., 2020): the server gets only the (quantised) sum of the
updates, never one of them. Its protocol and cost model: fedit.privacy.secagg and the Flower side
(fedit.runners.flower.secagg); this module declares its options and what it hides."""

from __future__ import annotations

from dataclasses import dataclass

from fedit.method_api import Capabilities, Method, option, require


@dataclass
class Options:
    secure_aggregation: bool = option(False, "sum the client updates with Flower's SecAgg+ so the server never "
                                      "sees an individual update (the simulation computes the same quantised sum)")
    secagg_num_shares: int | None = option(None, "SecAgg+: shares of each client's secrets, i.e. its neighbours "
                                           "+ itself (odd, >= 3); None: every sampled client, i.e. SecAgg")
    secagg_threshold: int | None = option(None, "SecAgg+: shares needed to rebuild a secret; up to shares - "
                                          "threshold neighbours may drop out; None: a strict majority of the shares")
    secagg_clipping_range: float | None = option(None, "SecAgg+: each coordinate of an update is clipped to "
                                                 "+-this before quantisation; None: --dp-clip under DP (widened "
                                                 "by the local noise in --dp-mode local), else 1.0")
    secagg_quantization_range: int = option(1 << 22, "SecAgg+: quantisation levels over [-range, +range] "
                                            "(Flower's default 2^22)")

    def __post_init__(self) -> None:
        q = self.secagg_quantization_range
        require(2 <= q <= 1 << 30, "secagg_quantization_range", f"must be in [2, 2^30], got {q}")
        require(self.secagg_clipping_range is None or self.secagg_clipping_range > 0, "secagg_clipping_range",
                f"must be positive, got {self.secagg_clipping_range}")
        s, t = self.secagg_num_shares, self.secagg_threshold
        require(s is None or (s >= 3 and s % 2 == 1), "secagg_num_shares", f"must be odd and at least 3, got {s}")
        require(t is None or t >= 2, "secagg_threshold", f"must be at least 2, got {t}")
        require(s is None or t is None or t <= s, "secagg_threshold", f"{t} is more than --secagg-num-shares {s}")
        if not self.secure_aggregation:
            for name in ("secagg_num_shares", "secagg_threshold", "secagg_clipping_range"):
                require(getattr(self, name) is None, name, "needs --secure-aggregation")


METHOD = Method("secagg", "privacy", "SecAgg+: the server gets only the masked, quantised sum of the updates",
                order=13, options=(Options,), section="privacy",
                capabilities=Capabilities(releases_only_mean=True, hides_each_update=True, uneven_ranks_ok=False),
                active=lambda cfg: cfg.privacy.secure_aggregation, flags=lambda cfg: "--secure-aggregation")
