"""What the server sees of a client's update under a run's mechanisms, recomputed for the audit.

The audit trains the target client once more from a global adapter of the run, with the run's own
local settings, and builds the update the way the run would deliver it: the client config of the
run's strategy (clip and local noise of DP-FedAvg, the codec's keys), then the server's ``receive``
(decoding). Under secure aggregation the server sees only the round's aggregate, so the other
clients of a cohort are trained too and the view is their example-weighted mean (the quantisation
of the secure sum is left out: it moves each coordinate by at most 2^-21 of the clip range).
The *plain* view, the unprotected update, is always computed as the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from fedit.client.job import ClientJob, run_job, transform_update
from fedit.config import Config
from fedit.data.prompts import TokenizedExample
from fedit.model import AdapterState
from fedit.server import Strategy, build_strategy
from fedit.server.strategy import base_strategy

PRIVACY_KEYS = ("dp_clip", "dp_noise", "dp_noise_seed", "compress", "compress_block_size")


@dataclass
class View:
    name: str               # plain, clipped, local-dp, int8, topk:0.1, secure-sum (joined by +)
    state: AdapterState     # the global adapter moved by what the server sees
    cohort: list[int]       # the clients whose updates it holds


def mechanism_name(cfg: Config) -> str:
    """The run's view of one update: what its mechanisms leave the server."""
    p, parts = cfg.privacy, []
    if p.dp and p.dp_mode == "local":
        parts.append("local-dp")
    elif p.dp and p.dp_clip != "auto":
        parts.append("clipped")
    if cfg.communication.compress != "none":
        parts.append(cfg.communication.compress)
    if p.secure_aggregation:
        parts.append("secure-sum")
    return "+".join(parts) or "plain"


def round_config(strategy: Strategy, round_idx: int, state: AdapterState) -> tuple[dict[str, Any], list[int]]:
    """The client config the run's strategy sends in a round (the first round that samples anyone)
    and that round's cohort."""
    for r in range(round_idx, round_idx + 1000):
        jobs = strategy.configure_train(r, state)
        if jobs:
            config = {k: v for k, v in jobs[0].config.items() if k not in ("lora_rank", "lora_targets")}
            return config, [j.client_id for j in jobs]
    raise RuntimeError("the run's sampler drew nobody in 1000 rounds")


def train_view(trainer: Any, cfg: Config, strategy: Strategy, state: AdapterState, round_idx: int, client: int,
               data: Sequence[TokenizedExample], config: dict[str, Any]
               ) -> tuple[AdapterState, AdapterState, int]:
    """``client`` trained once: (the plain adapter, the adapter the server reads from its reply under
    ``config``, decoded), and its example count. The privacy and codec keys change only the client's
    transforms after training, so both come from one training."""
    base = base_strategy(strategy)
    layout = base.client_config(round_idx, client)
    plain_job = ClientJob(client, round_idx, base.client_state(client, state),
                          {**{k: v for k, v in config.items() if k not in PRIVACY_KEYS}, **layout})
    job = ClientJob(client, round_idx, plain_job.state, {**config, **layout})
    raw, _ = run_job(trainer, plain_job, data, cfg.train, seed=cfg.federation.seed)
    seen = strategy.receive(job, transform_update(raw, job, {}))
    return {**state, **raw.state}, {**state, **seen.state}, seen.num_examples


def views(trainer: Any, cfg: Config, num_clients: int, state: AdapterState, round_idx: int, target: int,
          data_of: Any) -> list[View]:
    """The plain view of ``target``'s update and, when the run's mechanisms change it, the seen one."""
    strategy = build_strategy(cfg, num_clients)
    config, cohort = round_config(strategy, round_idx, state)
    plain, seen, _ = train_view(trainer, cfg, strategy, state, round_idx, target, data_of(target), config)
    out = [View("plain", plain, [target])]
    name = mechanism_name(cfg)
    if name == "plain":
        return out
    if not cfg.privacy.secure_aggregation:
        return out + [View(name, seen, [target])]
    others = [c for c in cohort if c != target][:len(cohort) - 1]
    trained = [(seen, len(data_of(target)))] + [
        train_view(trainer, cfg, strategy, state, round_idx, c, data_of(c), config)[1:] for c in others]
    if cfg.privacy.dp:   # DP-FedAvg's secure sum weighs every client equally (its sensitivity is one clip)
        trained = [(s, 1) for s, _ in trained]
    total = sum(n for _, n in trained)
    mean = {k: sum(s[k].float() * (n / total) for s, n in trained) for k in state}
    return out + [View(name, mean, [target] + others)]
