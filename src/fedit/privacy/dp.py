"""DP-FedAvg (McMahan et al., 2018), the maths and the client side.

A client's contribution is its *update*: the change it made to the whole adapter,
``delta = trained - global``, over every LoRA tensor at once. The client clips it to L2 norm C
(``--dp-clip``), so no single client can move the sum by more than C; in ``--dp-mode local`` it
also adds N(0, (zC)^2) to every coordinate before anything leaves it. The server side (noise on
the sum, the fixed denominator, the accountant) is :mod:`fedit.privacy.dp_strategy`.

The client transform reads its settings from the job's client config (keys ``dp_clip``,
``dp_noise``, ``dp_noise_seed`` of :data:`fedit.client.job.CLIENT_KEYS`), so it runs unchanged in
the simulation and on a Flower node (``run_job`` applies every registered transform).
"""

from __future__ import annotations

import math
import secrets
from typing import Sequence

import numpy as np
import torch

from fedit.client.job import ClientJob, ClientState, ClientUpdate
from fedit.model import AdapterState

# Words mixed into noise seeds, so the server's and the clients' noise streams never coincide.
SERVER_NOISE, CLIENT_NOISE = 0, 1


def l2_norm(state: AdapterState) -> float:
    """The L2 norm of all tensors of ``state`` taken together (accumulated in float64)."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in state.values()))


def clip_to_norm(update: AdapterState, clip: float) -> tuple[AdapterState, float]:
    """``update`` scaled by min(1, clip / ||update||) and its norm before clipping."""
    norm = l2_norm(update)
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    return ({k: v * scale for k, v in update.items()} if scale < 1.0 else dict(update)), norm


def noise_generator(seed: int, *words: int) -> torch.Generator:
    """A torch generator seeded from (seed, words...): independent streams per round and client."""
    state = np.random.SeedSequence([seed, *words]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def secret_seed() -> int:
    """A seed nobody can guess (the OS's entropy): the default for DP noise."""
    return secrets.randbits(63)


def gaussian_like(like: AdapterState, std: float, generator: torch.Generator) -> AdapterState:
    """Independent N(0, std^2) for every coordinate of ``like`` (float32), in sorted key order."""
    return {k: torch.randn(like[k].shape, generator=generator, dtype=torch.float32) * std for k in sorted(like)}


def add(a: AdapterState, b: AdapterState, scale: float = 1.0) -> AdapterState:
    return {k: a[k].float() + scale * b[k].float() for k in a}


def sum_states(states: Sequence[AdapterState]) -> AdapterState:
    out = {k: torch.zeros_like(v, dtype=torch.float32) for k, v in states[0].items()}
    for state in states:
        for k, v in state.items():
            out[k].add_(v.float())
    return out


def dp_client_transform(update: ClientUpdate, job: ClientJob, client_state: ClientState) -> ClientUpdate:
    """Clip the update to ``dp_clip`` and, in local mode (``dp_noise`` = z > 0), add N(0, (zC)^2).

    The noise of local mode comes from the OS's entropy unless the run fixed ``--dp-noise-seed``
    (then from (seed, round, client): reproducible, and no secret from whoever knows the seed).
    """
    clip = job.config.get("dp_clip")
    if clip is None:
        return update
    clip = float(clip)
    delta = {k: update.state[k].float() - job.state[k].float() for k in job.state}
    clipped, _ = clip_to_norm(delta, clip)
    z = float(job.config.get("dp_noise", 0.0))
    if z > 0:
        seed = job.config.get("dp_noise_seed")
        gen = noise_generator(int(seed), CLIENT_NOISE, job.round, job.client_id) if seed is not None \
            else noise_generator(secret_seed())
        clipped = add(clipped, gaussian_like(clipped, z * clip, gen))
    return ClientUpdate(update.client_id, add(job.state, clipped), update.num_examples, update.metrics,
                        update.arrays)
