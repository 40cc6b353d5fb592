"""The fedit ClientApp: one SuperNode = one client, training on the node's own data file.

Flower starts a fresh ClientApp process per message, so every handler builds what it needs:
the records from the node config's ``data-path`` (never sent anywhere) and, for ``train``,
the base model from fedit's safetensors cache. The update is the core's ``run_job`` on the job
the message carries (client index, round, client config): the same update the in-process
simulation computes for that client. What a client keeps between rounds (its client state)
lives in the node's ``context.state``, which Flower keeps on the node for the whole run.

Under Flower's Simulation Engine (``flwr run`` on a SuperLink started with ``--simulation``,
docs/flower.md) the nodes are virtual: their node config holds ``partition-id`` instead of a
``data-path``, and node *i* trains client *i* of the run's own partition of ``--data``, exactly
the records ``fedit run`` gives client *i* (any ``--partition``). Such a ClientApp runs in a
long-lived Ray actor, so the partition and the resident model are kept between its messages.

A user error on the node (missing or malformed data file, bad config) is answered with a
one-line error reply, which the server logs and drops; it never crashes the round.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedit.config import Config
from fedit.data import Example, load_examples
from fedit.errors import ConfigError, DataError, FeditError
from fedit.runners.flower.secagg import secure_aggregation_mod
from fedit.runners.flower.wire import (CLIENT_INDEX_KEY, CONFIG, DATA_PATH_KEY, FEDIT_ERROR_CODE, LORA_RANK_KEY,
                                       LORA_TARGETS_KEY, PERSONAL_DIR_KEY, config_from_run, job_from_message,
                                       update_content)

logger = logging.getLogger(__name__)

app = ClientApp(mods=[secure_aggregation_mod])  # SecAgg+ messages only (--secure-aggregation)
STATE_PREFIX = "fedit.client-state."  # + name: one ArrayRecord per entry of the client state


PARTITION_ID_KEY = "partition-id"  # what Flower's Simulation Engine puts in each virtual node's config
_CACHE: dict[str, Any] = {}       # simulation (one Ray actor, many messages): partitions and model


def simulated(node_config: dict[str, Any]) -> bool:
    """A virtual node of Flower's Simulation Engine (no data file, a partition id)."""
    return not node_config.get(DATA_PATH_KEY) and isinstance(node_config.get(PARTITION_ID_KEY), int)


def _cached(key: str, build):
    if key not in _CACHE:
        if len(_CACHE) > 4:
            _CACHE.clear()
        _CACHE[key] = build()
    return _CACHE[key]


def simulated_records(cfg: Config, client_id: int) -> list[Example]:
    """Client ``client_id``'s records of the run's partition of ``--data`` (as ``fedit run``)."""
    from fedit.config import dump_config
    from fedit.runners.common import load_clients  # imports torch

    clients = _cached("clients:" + dump_config(cfg), lambda: load_clients(cfg))
    if not 0 <= client_id < len(clients):
        raise ConfigError(f"partition-id {client_id}: the run's --data has {len(clients)} clients; set "
                          f"num-supernodes to at most {len(clients)}")
    return clients[client_id]


def node_client_index(node_config: dict[str, Any]) -> int | None:
    """The client index the node config pins (``client-index``, or a simulated node's partition id)."""
    if simulated(node_config):
        return int(node_config[PARTITION_ID_KEY])
    value = node_config.get(CLIENT_INDEX_KEY)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"node config {CLIENT_INDEX_KEY}: expected an int >= 0, got {value!r}")
    return value


def node_lora(node_config: dict[str, Any], cfg: Config) -> tuple[int | None, str | None]:
    """The adapter this node can train (``lora-rank``, ``lora-targets``; None where unset): the
    data owner knows its device. ConfigError (one line) if the values are unusable."""
    from fedit.client_lora import canonical_targets

    rank = node_config.get(LORA_RANK_KEY)
    if rank is not None and rank != "":
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= cfg.lora.lora_r:
            raise ConfigError(f"node config {LORA_RANK_KEY}: expected an int from 1 to the run's --lora-r "
                              f"{cfg.lora.lora_r}, got {rank!r}")
    else:
        rank = None
    targets = node_config.get(LORA_TARGETS_KEY)
    if targets is not None and (not isinstance(targets, str) or not canonical_targets(targets)):
        raise ConfigError(f"node config {LORA_TARGETS_KEY}: expected all-linear or a comma list of modules, "
                          f"got {targets!r}")
    return rank, canonical_targets(targets) if targets else None


def check_job_lora(node_config: dict[str, Any], cfg: Config, job_config: dict[str, Any]) -> None:
    """Refuse a job for another adapter than the one this node's config says it trains."""
    from fedit.client.job import job_lora
    from fedit.client_lora import canonical_targets

    rank, targets = node_lora(node_config, cfg)
    asked = job_lora(job_config) or (None, cfg.lora.lora_targets)
    asked_rank = cfg.lora.lora_r if asked[0] is None else asked[0]
    if rank is not None and rank != asked_rank:
        raise ConfigError(f"node config {LORA_RANK_KEY}={rank} but the server asked for rank {asked_rank}")
    if targets is not None and targets != canonical_targets(asked[1]):
        raise ConfigError(f"node config {LORA_TARGETS_KEY}={targets} but the server asked for {asked[1]}")


def node_records(node_config: dict[str, Any], columns: str | None = None) -> list[Example]:
    """The node's records (``data-path``, fields renamed by the run's ``--columns``), validated;
    a one-line FeditError if unusable."""
    path = node_config.get(DATA_PATH_KEY)
    if not isinstance(path, str) or not path:
        raise ConfigError(f"node config {DATA_PATH_KEY} is not set: start the SuperNode with "
                          f"--node-config '{DATA_PATH_KEY}=\"FILE.json\"' (or fedit deploy supernode --data)")
    if not Path(path).expanduser().is_file():
        raise DataError(f"{path}: no such data file")
    examples, report = load_examples(path, columns=columns)
    if not examples:
        raise DataError(f"{path}: no usable records ({report.summary()})")
    return examples


def node_examples(node_config: dict[str, Any], cfg: Config, client_id: int) -> list[Example]:
    """The records this node trains on as client ``client_id``: subsampled as the simulation does."""
    if simulated(node_config):
        return simulated_records(cfg, client_id)
    from fedit.data.client_test import split_one
    from fedit.runners.common import client_subsample, data_seed  # imports torch: only when training

    records = client_subsample(node_records(node_config, cfg.data.columns), cfg, client_id)
    if cfg.data.client_test_fraction is None:
        return records
    # --client-test-fraction: the node holds out the same records the simulation holds out of this client
    return split_one(records, cfg.data.client_test_fraction, data_seed(cfg), client_id)[0]


def _error_reply(msg: Message, context: Context, exc: BaseException) -> Message:
    reason = f"node {context.node_id}: {type(exc).__name__}: {exc}".replace("\n", " ")
    logger.error(reason)
    return Message(Error(code=FEDIT_ERROR_CODE, reason=reason), reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's roll call: this node's client index (-1: any), its record count and the
    adapter it trains (lora-rank 0 / lora-targets "": the run's)."""
    answer: dict[str, Any] = {"client-index": -1, "num-examples": 0, "error": "", LORA_RANK_KEY: 0,
                              LORA_TARGETS_KEY: ""}
    try:
        index = node_client_index(context.node_config)
        answer["client-index"] = -1 if index is None else index
        cfg = config_from_run(context.run_config)
        rank, targets = node_lora(context.node_config, cfg)
        answer[LORA_RANK_KEY], answer[LORA_TARGETS_KEY] = rank or 0, targets or ""
        if simulated(context.node_config):
            answer["num-examples"] = len(simulated_records(cfg, index))
        else:
            limit = cfg.data.max_client_records
            answer["num-examples"] = min(len(node_records(context.node_config, cfg.data.columns)), limit or 1 << 62)
    except (FeditError, OSError, ValueError) as exc:
        answer["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return Message(RecordDict({CONFIG: ConfigRecord(answer)}), reply_to=msg)


def load_client_state(context: Context) -> dict:
    """The client state this node kept from its earlier rounds of this run (Flower keeps
    ``context.state`` on the node across the per-message ClientApp processes)."""
    return {key[len(STATE_PREFIX):]: context.state[key].to_torch_state_dict()
            for key in context.state if key.startswith(STATE_PREFIX)}


def save_client_state(context: Context, state: dict) -> None:
    from flwr.app import ArrayRecord

    for key in [k for k in context.state if k.startswith(STATE_PREFIX)]:
        del context.state[key]
    for name, tensors in state.items():
        context.state[STATE_PREFIX + name] = ArrayRecord(torch_state_dict=tensors)


def write_node_personal(node_config: dict[str, Any], bench: Any, job: Any, update: Any, state: dict) -> None:
    """--personalization on a node: its personal adapter after this round into its own folder
    (node config ``personal-dir``), never into a message (fedit.runners.personal.node_personal)."""
    folder = node_config.get(PERSONAL_DIR_KEY)
    if folder and job.config.get("personalization", "none") in ("fedsa", "dual"):
        from fedit.runners.personal import node_personal

        node_personal(Path(str(folder)), bench, job, update, state)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local round: the core's run_job on this node's records, as the simulation runs it."""
    try:
        cfg = config_from_run(context.run_config)
        job = job_from_message(msg)
        pinned = node_client_index(context.node_config)
        if pinned is not None and pinned != job.client_id:
            raise ConfigError(f"node config {CLIENT_INDEX_KEY}={pinned} but the server asked for "
                              f"client {job.client_id}")
        check_job_lora(context.node_config, cfg, job.config)
        examples = node_examples(context.node_config, cfg, job.client_id)
        from fedit.client.job import run_job  # torch, transformers, peft: ~7 s cold
        from fedit.runners.common import build_workbench, no_examples_reason

        if simulated(context.node_config):  # a long-lived Ray actor: keep the resident model
            from fedit.config import dump_config

            bench = _cached("bench:" + dump_config(cfg), lambda: build_workbench(cfg))
        else:
            bench = build_workbench(cfg)
        data = bench.tokenize(examples, cfg.data)
        if not data:  # every record skipped by tokenization: an update would be untrained
            raise DataError(no_examples_reason(job.client_id, len(examples), cfg.data.max_len))
        update, state = run_job(bench.trainer, job, data, cfg.train, seed=cfg.federation.seed,
                                client_state=load_client_state(context))
        save_client_state(context, state)
        write_node_personal(context.node_config, bench, job, update, state)
    except (FeditError, OSError, ValueError, KeyError) as exc:
        return _error_reply(msg, context, exc)
    return Message(update_content(update), reply_to=msg)
