"""What one round of SecAgg+ sends, counted as Flower counts a message's payload (the sum of
``record.count_bytes()`` over its records, as ``flwr.clientapp.mod.message_size_mod`` logs it).

The Flower deployment counts the real messages (:func:`message_bytes` on each one it sends and
receives); the simulation builds the same records' sizes from the protocol's structure
(:func:`round_cost`), with the key, share and ciphertext sizes measured once with Flower's own
crypto. Per client and round: 4 messages down and 4 up (setup, share keys, collect masked
vectors, unmask) instead of 1 and 1; the masked update is int64 per coordinate, twice fp32.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from fedit.privacy.secagg import MODULUS, STAGES, SecAggParams

NODE_ID_DIGITS = 19    # Flower node ids are random 63-bit integers; the simulation assumes 19 digits
STATUS = {"code": 0, "message": "ok"}   # the fitres status a fedit node sends


def config_bytes(record: Mapping[str, Any]) -> int:
    """``ConfigRecord.count_bytes`` (8 per number, 1 per bool, the length of str/bytes, plus the
    key), also for empty lists and strings, which Flower's own count cannot take."""
    total = 0
    for key, value in record.items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            total += 1 if isinstance(v, bool) else 8 if isinstance(v, (int, float)) else len(v)
        total += len(key)
    return total


def message_bytes(content) -> int:
    """The payload of a Flower message's RecordDict: config records as above, the rest by Flower."""
    from flwr.app import ConfigRecord

    return sum(config_bytes(r) if isinstance(r, ConfigRecord) else r.count_bytes() for r in content.values())


@functools.lru_cache(maxsize=1)
def crypto_sizes() -> dict[str, int]:
    """Sizes of SecAgg+'s key material, measured with Flower's crypto (EC P-384 PEM keys, Shamir
    shares of the 32-byte mask seed and of the private key, Fernet ciphertexts of both)."""
    from flwr.common.secure_aggregation.crypto.shamir import create_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import encrypt, generate_shared_key
    from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
    from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes, public_key_to_bytes

    sk, pk = generate_key_pairs()
    seed_share = create_shares(b"\0" * 32, 2, 3)[0]
    key_share = create_shares(private_key_to_bytes(sk), 2, 3)[0]
    plaintext = share_keys_plaintext_concat(1, 2, seed_share, key_share)
    return {"public_key": len(public_key_to_bytes(pk)), "seed_share": len(seed_share),
            "ciphertext": len(encrypt(generate_shared_key(sk, pk), plaintext))}


@functools.lru_cache(maxsize=64)
def array_bytes(shape: tuple[int, ...], dtype: str) -> int:
    """Length of ``flwr.common.ndarray_to_bytes`` of an array (NumPy's .npy format)."""
    from flwr.common import ndarray_to_bytes

    return len(ndarray_to_bytes(np.zeros(shape, dtype=dtype)))


def round_cost(params: SecAggParams, shapes: Sequence[tuple[int, ...]], fitins_config: Sequence[Mapping[str, Any]],
               fitres_metrics: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Bytes down and up, and messages, of one SecAgg+ round in which every sampled client takes part
    (``fitins_config[i]``/``fitres_metrics[i]``: the job config and reply metrics of client i)."""
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    n, s, k = params.clients, params.num_shares, crypto_sizes()
    others, ct, pk = s - 1, k["ciphertext"], k["public_key"]
    setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: s, Key.THRESHOLD: params.threshold,
             Key.CLIPPING_RANGE: 0.0, Key.TARGET_RANGE: 0, Key.MOD_RANGE: MODULUS, Key.MAX_WEIGHT: 0.0}
    fitins_arrays = sum(array_bytes(shape, "float32") + len(str(i)) for i, shape in enumerate(shapes))
    masked = [array_bytes((1,), "int64")] + [array_bytes(shape, "int64") for shape in shapes]
    down = n * (config_bytes(setup)
                + s * (NODE_ID_DIGITS + 2 * pk) + config_bytes({Key.STAGE: Stage.SHARE_KEYS})
                + fitins_arrays + config_bytes({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [],
                                                Key.SOURCE_LIST: []}) + others * (ct + 8)
                + config_bytes({Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [0] * s,
                                Key.DEAD_NODE_ID_LIST: []}))
    down += sum(config_bytes(c) for c in fitins_config)
    up = n * (config_bytes({Key.PUBLIC_KEY_1: b"\0" * pk, Key.PUBLIC_KEY_2: b"\0" * pk})
              + config_bytes({Key.DESTINATION_LIST: [0] * others, Key.CIPHERTEXT_LIST: [b"\0" * ct] * others})
              + len("num_examples") + 8 + config_bytes(STATUS) + sum(masked) + len(Key.MASKED_PARAMETERS)
              + config_bytes({Key.NODE_ID_LIST: [0] * s, Key.SHARE_LIST: [b"\0" * k["seed_share"]] * s}))
    up += sum(config_bytes(m) for m in fitres_metrics)
    return {"secagg_bytes_down": down, "secagg_bytes_up": up, "secagg_messages": 2 * STAGES * n,
            "secagg_round_trips": STAGES}
