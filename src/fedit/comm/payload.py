"""The records a job or an update travels as, and their size exactly as Flower serializes them.

The layout is defined once, here: ``fedit.runners.flower.wire`` builds Flower records from it and
the round loop counts the same bytes in every runner (the simulation imports no Flower).

Flower (1.41+) ships a message's content as an object tree: the ``RecordDict`` -> its records ->
each ``Array`` (``np.save`` bytes) -> ``ArrayChunk``s of at most 5 MiB. Every object is deflated
to a header ``"Type child-ids body-length\\0"`` plus its body (JSON references, protobuf for config
and metric records, raw bytes for chunks), and identical objects (same SHA-256) are sent once per
message. :func:`layout_bytes` is the sum over a content's distinct objects, i.e. the deflated
sizes of ``flwr.supercore.inflatable.get_all_nested_objects(content)``: what crosses the network
for a message besides its envelope (Metadata: ids, TTL, timestamps) and the gRPC/TLS framing.
tests/integration/test_flower_parts.py checks it against Flower's own serialization.
"""

from __future__ import annotations

import io
import json
import os
import struct
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from fedit.client.job import ClientJob, ClientUpdate

ARRAYS, CONFIG, JOB, METRICS = "arrays", "config", "job", "metrics"
EXTRA_PREFIX = "arrays."      # + name: one ArrayRecord per extra tensor dict of a job or update
INT64_MAX = (1 << 63) - 1

Layout = dict[str, tuple[str, Any]]  # record name -> (kind: "arrays" | "config" | "metrics", value)


def job_layout(job: ClientJob) -> Layout:
    """A train message's records: the adapter, (round, client), the client config, extra tensors."""
    return {ARRAYS: ("arrays", job.state),
            CONFIG: ("config", {"round": job.round, "client-index": job.client_id}),
            JOB: ("config", dict(job.config)),
            **{EXTRA_PREFIX + name: ("arrays", state) for name, state in job.arrays.items()}}


def update_layout(update: ClientUpdate) -> Layout:
    """A train reply's records: the adapter, metrics with the example count, extra tensors."""
    metrics = {k: float(v) if isinstance(v, float) else v for k, v in update.metrics.items()}
    return {ARRAYS: ("arrays", update.state),
            METRICS: ("metrics", {**metrics, "num-examples": update.num_examples,
                                  "client-index": update.client_id}),
            **{EXTRA_PREFIX + name: ("arrays", state) for name, state in update.arrays.items()}}


def job_payload_bytes(job: ClientJob, cache: dict | None = None) -> int:
    return layout_bytes(job_layout(job), cache)


def update_payload_bytes(update: ClientUpdate, cache: dict | None = None) -> int:
    return layout_bytes(update_layout(update), cache)


def chunk_size() -> int:
    """Flower's ArrayChunk size (its own environment variable and default)."""
    return int(os.getenv("FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE", "5242880"))


ID_LEN = 64  # an object id is a SHA-256 hex digest


class _Objects:
    """The distinct objects of one message content: identity key -> deflated size.

    Sizes do not depend on the ids' values (always 64 hex characters), only on which objects are
    identical; identity is decided on content (a chunk by its bytes, a parent by its children and
    body), which is what equal SHA-256 ids mean, without paying for SHA-256."""

    def __init__(self) -> None:
        self.sizes: dict[Any, int] = {}

    def add(self, type_name: str, children: list, body_len: int, identity: Any) -> Any:
        n = len(dict.fromkeys(children))
        head = len(type_name) + 1 + n * ID_LEN + max(0, n - 1) + 1 + len(str(body_len)) + 1  # + the \0
        key = (type_name, tuple(children), identity)
        self.sizes[key] = head + body_len
        return key


def layout_bytes(layout: Layout, cache: dict | None = None) -> int:
    """Bytes of a message content with this layout, as Flower deflates it. ``cache`` (a dict the
    caller keeps while the tensors live) saves re-reading a tensor sent in several messages."""
    objs, cache = _Objects(), {} if cache is None else cache
    refs = {}
    for name, (kind, value) in layout.items():
        if kind == "arrays":
            arrays = {key: _array(objs, tensor, cache) for key, tensor in value.items()}
            refs[name] = objs.add("ArrayRecord", list(arrays.values()), _refs_len(arrays), tuple(arrays))
        else:
            allowed = [bool, int, float, str, bytes] if kind == "config" else [float, int]
            body = _record_proto(value, allowed)
            type_name = "ConfigRecord" if kind == "config" else "MetricRecord"
            refs[name] = objs.add(type_name, [], len(body), body)
    objs.add("RecordDict", list(refs.values()), _refs_len(refs), tuple(refs))
    return sum(objs.sizes.values())


def _refs_len(refs: dict[str, Any]) -> int:
    """Length of the JSON body {name: object id} of an ArrayRecord or a RecordDict."""
    return len(json.dumps({name: "0" * ID_LEN for name in refs}).encode())


def _array(objs: _Objects, tensor: Any, cache: dict) -> Any:
    """An Array (``np.save`` bytes cut into chunks), added with its chunks; returns its key."""
    hit = cache.get(id(tensor))
    if hit is None or hit[0] is not tensor:
        sub = _Objects()
        arr = tensor.detach().cpu().numpy()
        head = io.BytesIO()
        header = np.lib.format.header_data_from_array_1_0(arr)
        np.lib.format.write_array_header_1_0(head, header)   # what np.save writes for these shapes
        data = head.getvalue() + arr.tobytes(order="F" if header["fortran_order"] else "C")
        step = chunk_size()
        pieces = [data[i:i + step] for i in range(0, len(data), step)]
        chunks = [sub.add("ArrayChunk", [], len(piece), hash(piece)) for piece in pieces]
        unique = list(dict.fromkeys(chunks))
        body = json.dumps({"dtype": str(arr.dtype), "shape": list(arr.shape), "stype": "numpy.ndarray",
                           "arraychunk_ids": [unique.index(c) for c in chunks]}).encode()
        key = sub.add("Array", chunks, len(body), body)
        hit = cache[id(tensor)] = (tensor, key, sub.sizes)
    objs.sizes.update(hit[2])
    return hit[1]


# ---- protobuf (flwr.proto.recorddict_pb2 ConfigRecord / MetricRecord), encoded by hand ----------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _scalar(t: type, v: Any) -> bytes:
    """A value of the oneof in *RecordValue: double 1, sint64 2, uint64 3, bool 4, string 5, bytes 6."""
    if t is float:
        return b"\x09" + struct.pack("<d", v)
    if t is int:
        return b"\x18" + _varint(v) if v > INT64_MAX else b"\x10" + _varint(_zigzag(v))
    if t is bool:
        return b"\x20" + (b"\x01" if v else b"\x00")
    raw = v.encode() if t is str else bytes(v)
    return _len_field(5 if t is str else 6, raw)


def _list(t: type, vals: list) -> bytes:
    """A list value: double_list 21, sint_list 22 (uint_list 23), bool_list 24, string_list 25,
    bytes_list 26; numbers packed, strings/bytes repeated."""
    if t in (str, bytes):
        body = b"".join(_len_field(1, v.encode() if t is str else bytes(v)) for v in vals)
        return _len_field(25 if t is str else 26, body)
    if t is float:
        packed, number = b"".join(struct.pack("<d", v) for v in vals), 21
    elif t is bool:
        packed, number = bytes(1 if v else 0 for v in vals), 24
    elif any(v > INT64_MAX for v in vals):
        packed, number = b"".join(_varint(v) for v in vals), 23
    else:
        packed, number = b"".join(_varint(_zigzag(v)) for v in vals), 22
    return _len_field(number, _len_field(1, packed) if vals else b"")


def _value(v: Any, allowed: list[type]) -> bytes:
    """As flwr's ``_record_value_to_proto``: the first allowed type the value (or every item of
    the list) is an instance of."""
    for t in allowed:
        if isinstance(v, t):
            return _scalar(t, v)
        if isinstance(v, list) and all(isinstance(item, t) for item in v):
            return _list(t, v)
    raise TypeError(f"a record cannot hold {type(v).__name__} values")


def _record_proto(values: dict[str, Any], allowed: list[type]) -> bytes:
    items = []
    for key, v in values.items():
        item = (_len_field(1, key.encode()) if key else b"") + _len_field(2, _value(v, allowed))
        items.append(_len_field(1, item))
    return b"".join(items)
