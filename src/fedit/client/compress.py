"""Update compression, the client's half: code the update's delta as the job asks (``--compress``).

The server's half (asking for it, decoding) is fedit.server.compression; the codecs are methods
(fedit.methods.codecs) over fedit.comm.codecs. Top-k keeps error feedback (Stich et al., 2018;
Karimireddy et al., 2019) in the client state: the entries a round does not send are added to the
client's next delta, so nothing is lost, only late (``sent + new residual == delta + old residual``
exactly). A client that is not sampled again keeps its residual; in the simulation it is
checkpointed with the round, on a Flower node it lives in the node's context for the run.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from fedit.client.types import ClientJob, ClientState, ClientUpdate
from fedit.comm.codecs import AUX, decode, encode
from fedit.config import parse_codec
from fedit.model import AdapterState
from fedit.registry import method

logger = logging.getLogger(__name__)

RESIDUAL = "compress.residual"  # client-state key of top-k's error feedback


def compress_update(update: ClientUpdate, job: ClientJob, client_state: ClientState) -> ClientUpdate:
    """Client transform: the update with its delta coded as ``job.config['compress']`` asks."""
    spec = str(job.config.get("compress", "none"))
    if spec == "none":
        return update
    codec, share = parse_codec(spec)
    block = int(job.config.get("compress_block_size", 64))
    feedback = method("codec", codec).capabilities.client_state   # top-k's error feedback
    residual = client_state.get(RESIDUAL, {}) if feedback else {}
    main: AdapterState = {}
    aux: AdapterState = {}
    kept: AdapterState = {}
    for key, sent in job.state.items():
        delta = update.state[key].to(torch.float32) - sent.to(torch.float32)
        if key in residual:
            delta = delta + residual[key]
        main[key], extra = encode(codec, delta, share=share, block=block)
        if extra is not None:
            aux[key] = extra
        if feedback:
            kept[key] = delta - decode(codec, main[key], extra, delta.shape)
    if feedback:
        client_state[RESIDUAL] = kept
    arrays = {**update.arrays, AUX: aux} if aux else dict(update.arrays)
    return dataclasses.replace(update, state=main, arrays=arrays)


class CodecClient:
    """A codec's client half: codes the update when the job asks for this codec (every codec gets one)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def transform(self, update: ClientUpdate, job: ClientJob, client_state: ClientState) -> ClientUpdate:
        if str(job.config.get("compress", "none")).partition(":")[0] != self.name:
            return update
        return compress_update(update, job, client_state)


