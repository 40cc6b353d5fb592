"""What crosses the wire between the fedit ServerApp and ClientApp, as Flower records.

The run's :class:`~fedit.config.Config` travels as the YAML text of ``config.yaml`` in one
run-config key, so both apps build exactly the configuration ``fedit run`` would. Adapters
travel as named arrays (an ``ArrayRecord`` of the PEFT adapter state), replies carry the
number of examples and the client's training metrics in a ``MetricRecord``. A train message
carries a whole :class:`~fedit.client.job.ClientJob`: the adapter, the round and client index,
the open client-config mapping (its own ``ConfigRecord``) and any extra tensors (one
``ArrayRecord`` each); a reply carries a whole ``ClientUpdate`` the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedit.comm.payload import ARRAYS, CONFIG, EXTRA_PREFIX, JOB, METRICS, Layout, job_layout, update_layout
from fedit.config import Config, DeployConfig, dump_config
from fedit.errors import ConfigError, UpdateError

if TYPE_CHECKING:  # torch-free at import: a ClientApp answering a query never loads torch
    from fedit.client.job import ClientJob, ClientUpdate

# Run-config keys (the app's pyproject declares them; see appdir.py).
CONFIG_KEY = "fedit-config"          # YAML text of the Config
OUT_KEY = "out"                      # run directory on the SuperLink's machine (absolute)
RESUME_KEY = "resume"                # continue the run in OUT from its last checkpoint
# ... and one key per DeployConfig field, named like its flag: min-nodes, wait-nodes, node-timeout,
# round-timeout.

# Node-config keys (flower-supernode --node-config / fedit deploy supernode).
DATA_PATH_KEY = "data-path"
CLIENT_INDEX_KEY = "client-index"
LORA_RANK_KEY = "lora-rank"          # the rank this node trains (heterogeneous clients; default: the run's)
PERSONAL_DIR_KEY = "personal-dir"    # where the node writes its personal adapter (--personalization)
LORA_TARGETS_KEY = "lora-targets"    # the modules this node adapts (default: the run's)

FEDIT_ERROR_CODE = 100               # a node's user error (bad data file...), one line in the reason


def _key(name: str) -> str:
    return name.replace("_", "-")


def deploy_values(deploy: DeployConfig) -> dict[str, Any]:
    """The DeployConfig as run-config keys (wait-nodes resolved: TOML has no null)."""
    return {_key("min_nodes"): deploy.min_nodes, _key("wait_nodes"): deploy.nodes_to_wait_for,
            _key("node_timeout"): float(deploy.node_timeout), _key("round_timeout"): float(deploy.round_timeout)}


def deploy_from_run(run_config: dict[str, Any]) -> DeployConfig:
    """The DeployConfig of a run config; absent keys take the one default of DeployConfig."""
    names = [f.name for f in dataclasses.fields(DeployConfig)]
    return DeployConfig(**{n: run_config[_key(n)] for n in names if _key(n) in run_config})


def check_deployable(cfg: Config) -> None:
    """Settings that exist only in the simulation are refused before anything starts."""
    if cfg.robustness.attack != "none":
        raise ConfigError(f"--attack {cfg.robustness.attack}: attacks are simulated by `fedit run` only; "
                          "a Flower deployment has no simulated attackers")
    if cfg.privacy.audit_canaries:
        raise ConfigError("--audit-canaries: canaries are inserted by `fedit run` only; a Flower node's data is "
                          "its own")


def run_config_values(cfg: Config, out: Path, *, resume: bool = False,
                      deploy: DeployConfig | None = None) -> dict[str, Any]:
    """The run config of a fedit run (what ``flwr run --run-config FILE`` submits)."""
    return {CONFIG_KEY: dump_config(cfg), OUT_KEY: str(Path(out).resolve()), RESUME_KEY: resume,
            **deploy_values(deploy or DeployConfig())}


def config_from_run(run_config: dict[str, Any]) -> Config:
    """The Config of a run, from its Flower run config."""
    text = run_config.get(CONFIG_KEY)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"run config '{CONFIG_KEY}' is empty: submit runs with `fedit deploy submit` "
                          "or pass --run-config with the YAML of a fedit config")
    return Config.from_dict(yaml.safe_load(text), f"run config '{CONFIG_KEY}'")


def _records(layout: Layout) -> RecordDict:
    """Flower records of a layout (fedit.comm.payload: the one definition of what travels)."""
    kinds = {"arrays": lambda v: ArrayRecord(torch_state_dict=v), "config": ConfigRecord, "metrics": MetricRecord}
    return RecordDict({name: kinds[kind](value) for name, (kind, value) in layout.items()})


def _extra_arrays(content: RecordDict) -> dict[str, Any]:
    return {key[len(EXTRA_PREFIX):]: content[key].to_torch_state_dict()
            for key in content if key.startswith(EXTRA_PREFIX)}


def train_content(job: ClientJob) -> RecordDict:
    return _records(job_layout(job))


def job_from_message(msg: Message) -> ClientJob:
    """The ClientJob a train message carries (KeyError/ValueError if it is malformed)."""
    from fedit.client.job import ClientJob

    content = msg.content
    conf = content[CONFIG]
    return ClientJob(int(conf["client-index"]), int(conf["round"]), content[ARRAYS].to_torch_state_dict(),
                     dict(content[JOB]), _extra_arrays(content))


def update_content(update: ClientUpdate) -> RecordDict:
    return _records(update_layout(update))


def update_from_reply(reply: Message, client_id: int) -> ClientUpdate:
    """A ClientUpdate from a train reply; UpdateError (one line) if it is an error or malformed."""
    from fedit.client.job import ClientUpdate

    if reply.has_error():
        raise UpdateError(f"client {client_id} (node {reply.metadata.src_node_id}): {reply.error.reason}")
    try:
        content = reply.content
        state = content[ARRAYS].to_torch_state_dict()
        metrics = dict(content[METRICS])
        arrays = _extra_arrays(content)
    except Exception as exc:  # a foreign or broken reply
        raise UpdateError(f"client {client_id}: malformed reply ({type(exc).__name__}: {exc})") from None
    num_examples = metrics.pop("num-examples", None)
    metrics.pop("client-index", None)
    return ClientUpdate(client_id, state, num_examples, metrics, arrays)
