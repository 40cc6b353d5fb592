"""What crosses the wire between the fedit ServerApp and ClientApp, as Flower records.

The run's :class:`~fedit.config.Config` travels as the YAML text of ``config.yaml`` in one
run-config key, so both apps build exactly the configuration ``fedit run`` would. Adapters
travel as named arrays (an ``ArrayRecord`` of the PEFT adapter state), replies carry the
number of examples and the client's training metrics in a ``MetricRecord``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedit.config import Config, dump_config
from fedit.errors import ConfigError, UpdateError

if TYPE_CHECKING:  # torch-free at import: a ClientApp answering a query never loads torch
    from fedit.client.train import ClientUpdate
    from fedit.model import AdapterState

# Run-config keys (the app's pyproject declares them; see app.py).
CONFIG_KEY = "fedit-config"          # YAML text of the Config
OUT_KEY = "out"                      # run directory on the SuperLink's machine (absolute)
RESUME_KEY = "resume"                # continue the run in OUT from its last checkpoint
MIN_NODES_KEY = "min-nodes"          # valid updates a round needs to be aggregated
WAIT_NODES_KEY = "wait-nodes"        # nodes to wait for before round 1
NODE_TIMEOUT_KEY = "node-timeout"    # seconds to wait for them
ROUND_TIMEOUT_KEY = "round-timeout"  # seconds a round waits for replies (0: until all reply)

# Node-config keys (flower-supernode --node-config / fedit deploy supernode).
DATA_PATH_KEY = "data-path"
CLIENT_INDEX_KEY = "client-index"

# Message content keys.
ARRAYS, CONFIG, METRICS = "arrays", "config", "metrics"
FEDIT_ERROR_CODE = 100               # a node's user error (bad data file...), one line in the reason


def run_config_values(cfg: Config, out: Path, *, resume: bool = False, min_nodes: int = 1,
                      wait_nodes: int = 1, node_timeout: float = 300.0,
                      round_timeout: float = 0.0) -> dict[str, Any]:
    """The run config of a fedit run (what ``flwr run --run-config FILE`` submits)."""
    return {CONFIG_KEY: dump_config(cfg), OUT_KEY: str(Path(out).resolve()), RESUME_KEY: resume,
            MIN_NODES_KEY: min_nodes, WAIT_NODES_KEY: wait_nodes,
            NODE_TIMEOUT_KEY: float(node_timeout), ROUND_TIMEOUT_KEY: float(round_timeout)}


def config_from_run(run_config: dict[str, Any]) -> Config:
    """The Config of a run, from its Flower run config."""
    text = run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"run config '{CONFIG_KEY}' is empty: submit runs with `fedit deploy submit` "
                          "or pass --run-config with the YAML of a fedit config")
    return Config.from_dict(yaml.safe_load(text), f"run config '{CONFIG_KEY}'")


def train_content(state: AdapterState, round_idx: int, client_id: int, proximal_mu: float) -> RecordDict:
    return RecordDict({
        ARRAYS: ArrayRecord(torch_state_dict=state),
        CONFIG: ConfigRecord({"round": round_idx, "client-index": client_id, "proximal-mu": proximal_mu}),
    })


def update_content(update: ClientUpdate) -> RecordDict:
    metrics = {k: float(v) if isinstance(v, float) else v for k, v in update.metrics.items()}
    return RecordDict({
        ARRAYS: ArrayRecord(torch_state_dict=update.state),
        METRICS: MetricRecord({**metrics, "num-examples": update.num_examples,
                               "client-index": update.client_id}),
    })


def update_from_reply(reply: Message, client_id: int) -> ClientUpdate:
    """A ClientUpdate from a train reply; UpdateError (one line) if it is an error or malformed."""
    from fedit.client.train import ClientUpdate

    if reply.has_error():
        raise UpdateError(f"client {client_id} (node {reply.metadata.src_node_id}): {reply.error.reason}")
    try:
        content = reply.content
        state = content[ARRAYS].to_torch_state_dict()
        metrics = dict(content[METRICS])
    except Exception as exc:  # a foreign or broken reply
        raise UpdateError(f"client {client_id}: malformed reply ({type(exc).__name__}: {exc})") from None
    num_examples = metrics.pop("num-examples", None)
    metrics.pop("client-index", None)
    return ClientUpdate(client_id, state, num_examples, metrics)
