"""DP-FedAvg (McMahan et al., 2018), client-level differential privacy, central or local mode.

Turned on by --dp-clip. Server half: fedit.privacy.dp_strategy (clip, noise the sum, fixed denominator,
accountant); client half: fedit.privacy.dp.dp_client_transform (clip, and noise in local mode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedit.method_api import Capabilities, ClientKey, Lazy, Method, option, require

DP_MODES = ("central", "local")
DP_ACCOUNTANTS = ("rdp", "pld")


@dataclass
class Options:
    dp_clip: float | str | None = option(None, "DP-FedAvg: clip each client's update (its change to the whole "
                                         "adapter) to this L2 norm C, or auto (adaptive clipping towards "
                                         "--dp-target-quantile of the norms); setting it turns client-level DP on",
                                         client=float)
    dp_noise_multiplier: float | None = option(None, "DP-FedAvg: Gaussian noise std / C (z); the server adds "
                                               "N(0, (zC)^2) to the sum of clipped updates; None: calibrated "
                                               "from --dp-target-epsilon")
    dp_mode: str = option("central", "DP-FedAvg: central (the server adds the noise) or local (each client "
                          "noises its own clipped update; the server only averages)", DP_MODES)
    dp_delta: float = option(1e-5, "DP-FedAvg: the delta at which epsilon is reported (keep it well below "
                             "1 / number of clients)")
    dp_target_epsilon: float | None = option(None, "DP-FedAvg: the privacy budget: calibrates --dp-noise-multiplier "
                                             "for --rounds when that is not set; a run never goes beyond it")
    dp_noise_seed: int | None = option(None, "DP-FedAvg: seed of the noise and of client sampling, for "
                                       "reproducible experiments only (anyone who knows it can remove the noise); "
                                       "None: a secret seed from the OS, kept only in checkpoints/", client=int)

    dp_accountant: str = option("rdp", "DP-FedAvg: the accountant of dp-accounting that gives epsilon: rdp (Renyi "
                                "DP) or pld (privacy loss distributions, tighter; needs --client-sampling poisson "
                                "in central mode)", DP_ACCOUNTANTS)
    dp_target_quantile: float = option(0.5, "DP-FedAvg --dp-clip auto: the share of updates the clip should "
                                       "leave unclipped (Andrew et al. 2021)")
    dp_clip_initial: float = option(0.1, "DP-FedAvg --dp-clip auto: the clip of the first round")
    dp_clip_lr: float = option(0.2, "DP-FedAvg --dp-clip auto: geometric learning rate of the clip")
    dp_clip_count_noise: float | None = option(None, "DP-FedAvg --dp-clip auto: std of the noise on the count "
                                               "of unclipped updates; None: clients per round / 20")

    def __post_init__(self) -> None:
        clip = self.dp_clip
        if isinstance(clip, str):
            require(clip == "auto", "dp_clip", f"must be a positive number or auto, got {clip!r}")
        else:
            require(clip is None or clip > 0, "dp_clip", f"must be positive, got {clip}")
        q = self.dp_target_quantile
        require(0 < q < 1, "dp_target_quantile", f"must be in (0, 1), got {q}")
        require(self.dp_clip_initial > 0, "dp_clip_initial", f"must be positive, got {self.dp_clip_initial}")
        require(self.dp_clip_lr > 0, "dp_clip_lr", f"must be positive, got {self.dp_clip_lr}")
        noise = self.dp_clip_count_noise
        require(noise is None or noise > 0, "dp_clip_count_noise", f"must be positive, got {noise}")
        z = self.dp_noise_multiplier
        require(z is None or z >= 0, "dp_noise_multiplier", f"must be >= 0, got {z}")
        require(0 < self.dp_delta < 1, "dp_delta", f"must be in (0, 1), got {self.dp_delta}")
        target = self.dp_target_epsilon
        require(target is None or target > 0, "dp_target_epsilon", f"must be positive, got {target}")
        if self.dp_clip is None:
            for name in ("dp_noise_multiplier", "dp_target_epsilon", "dp_noise_seed"):
                require(getattr(self, name) is None, name, "needs --dp-clip (client-level DP is off without it)")
            require(self.dp_mode == "central", "dp_mode", "needs --dp-clip (client-level DP is off without it)")
        else:
            require(z is not None or target is not None, "dp_noise_multiplier",
                    "set it, or --dp-target-epsilon to calibrate it (--dp-clip turns DP on)")
            require(target is None or z is None or z > 0, "dp_target_epsilon",
                    "cannot be met with --dp-noise-multiplier 0 (no noise: epsilon is infinite)")


class Client:
    @staticmethod
    def transform(update: Any, job: Any, state: Any) -> Any:
        from fedit.privacy.dp import dp_client_transform

        return dp_client_transform(update, job, state)


METHOD = Method(
    "dp-fedavg", "privacy", "client-level DP: clip each update, Gaussian noise on the sum (central or local)",
                order=12, options=(Options,), section="privacy",
    capabilities=Capabilities(releases_only_mean=True, uneven_ranks_ok=False),
    server=Lazy("fedit.privacy.dp_strategy:wrap"), client=Client(),
    client_keys={"dp_noise": ClientKey(float, "DP-FedAvg local mode: add N(0, (dp_noise * dp_clip)^2) to the "
                                       "clipped update")},
    active=lambda cfg: cfg.privacy.dp_clip is not None, flags=lambda cfg: "--dp-clip")
