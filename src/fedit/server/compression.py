"""Update compression, the server's half: ask every client for coded updates, decode each as it arrives.

``--compress`` is the server's choice: :class:`Compression` (a strategy wrapper) puts it into every
job's client config (keys ``compress``, ``compress_block_size``); :func:`fedit.client.compress.compress_update` (a client
transform, run after local training in every runner) replaces the update's adapter by the coded
delta from the adapter the client was sent, with the codec's extra tensor under the update's
``arrays["compress.aux"]``; the wrapper's ``receive`` decodes it (``sent + delta``) before the reply
is checked and aggregated. The bytes the round loop counts are those of the coded reply.

Top-k keeps error feedback (Stich et al., 2018; Karimireddy et al., 2019) in the client state: the
entries a round does not send are added to the client's next delta, so nothing is lost, only late
(``sent + new residual == delta + old residual`` exactly). A client that is not sampled again
keeps its residual; in the simulation it is checkpointed with the round, on a Flower node it
lives in the node's context for the run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from fedit.client.job import ClientJob, ClientUpdate
from fedit.comm.codecs import AUX, decode
from fedit.config import Config, parse_codec
from fedit.errors import UpdateError
from fedit.model import AdapterState
from fedit.server.strategy import Strategy, StrategyWrapper


def decode_update(job: ClientJob, update: ClientUpdate, codec: str, block: int) -> ClientUpdate:
    """The update as an adapter again (``sent + decoded delta``); UpdateError if it is not coded
    as the server asked."""
    aux = update.arrays.get(AUX, {})
    state: AdapterState = {}
    for key, sent in job.state.items():
        if key not in update.state:
            raise UpdateError(f"client {update.client_id}: compressed update is missing {key}")
        try:
            delta = decode(codec, update.state[key], aux.get(key), sent.shape, block=block)
        except (ValueError, RuntimeError, TypeError, AttributeError) as exc:
            raise UpdateError(f"client {update.client_id}: compressed update {key} is not {codec}: "
                              f"{exc}".splitlines()[0]) from None
        state[key] = sent.to(torch.float32) + delta
    extra = set(update.state) - set(job.state)
    if extra:
        raise UpdateError(f"client {update.client_id}: compressed update has unexpected key {sorted(extra)[0]}")
    arrays = {k: v for k, v in update.arrays.items() if k != AUX}
    return dataclasses.replace(update, state=state, arrays=arrays)


class Compression(StrategyWrapper):
    """Asks every client for coded updates and decodes them as they arrive."""

    name = "compress"

    def __init__(self, inner: Strategy, *, compress: str, compress_block_size: int) -> None:
        super().__init__(inner)
        self.spec, self.block = compress, compress_block_size
        self.codec, _ = parse_codec(compress)

    def describe(self) -> str:
        return f"{self.inner.describe()} with {self.spec} updates"

    def configure_train(self, round_idx: int, global_state: AdapterState) -> list[ClientJob]:
        keys: dict[str, Any] = {"compress": self.spec, "compress_block_size": self.block}
        return [dataclasses.replace(job, config={**job.config, **keys})
                for job in self.inner.configure_train(round_idx, global_state)]

    def receive(self, job: ClientJob, update: ClientUpdate) -> ClientUpdate:
        return self.inner.receive(job, decode_update(job, update, self.codec, self.block))


def wrap(strategy: Strategy, cfg: Config) -> Strategy:
    """Compression around ``strategy`` when ``--compress`` is set (fedit.server.build)."""
    comm = cfg.communication
    if comm.compress == "none":
        return strategy
    return Compression(strategy, compress=comm.compress, compress_block_size=comm.compress_block_size)
