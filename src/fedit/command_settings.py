"""Settings of the commands around a run, not part of its config.yaml: a Flower deployment's server
side (deploy), how generate/chat sample (sampling), what export writes (export)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fedit.method_api import option as _opt
from fedit.method_api import require as _require
from fedit.schema import Section as _Section

@dataclass
class DeployConfig(_Section):
    """Settings of a Flower deployment's server side (not part of a run's config.yaml: they
    change how the federation is run, not what it computes)."""

    min_nodes: int = _opt(1, "valid updates a round needs; fewer stops the run (resumable with --resume)")
    wait_nodes: int | None = _opt(None, "nodes to wait for before round 1 (default: --min-nodes; "
                                  "deploy local: every --node-data node)")
    node_timeout: float = _opt(300.0, "seconds to wait for the nodes to connect and answer the roll call")
    round_timeout: float = _opt(0.0, "seconds a round (each secure-aggregation stage) waits for replies; 0: "
                                "derived from the round: once the first reply came after t s, the others get "
                                "max(300, 3t) s more; a line every 60 s names the nodes awaited")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.min_nodes >= 1, "min_nodes", f"must be at least 1, got {self.min_nodes}")
        _require(self.wait_nodes is None or self.wait_nodes >= 1, "wait_nodes",
                 f"must be at least 1, got {self.wait_nodes}")
        _require(self.node_timeout > 0, "node_timeout", f"must be positive, got {self.node_timeout}")
        _require(self.round_timeout >= 0, "round_timeout",
                 f"must be >= 0 (0: derived from the first reply), got {self.round_timeout}")

    @property
    def nodes_to_wait_for(self) -> int:
        return max(self.min_nodes, self.wait_nodes or self.min_nodes)


@dataclass
class SamplingConfig(_Section):
    """How ``fedit generate`` and ``fedit chat`` sample answers (not part of a run's config.yaml)."""

    temperature: float = _opt(0.0, "sampling temperature; 0 = greedy (deterministic)")
    top_p: float = _opt(1.0, "nucleus sampling: sample from the smallest set of tokens whose probability "
                        "reaches this (1 = all tokens; ignored when greedy)")
    max_new_tokens: int = _opt(128, "answer length limit in tokens")
    system: str | None = _opt(None, "system prompt put before the conversation")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.temperature >= 0, "temperature", f"must be >= 0 (0: greedy), got {self.temperature}")
        _require(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _require(self.max_new_tokens >= 1, "max_new_tokens", f"must be at least 1, got {self.max_new_tokens}")


@dataclass
class ExportConfig(_Section):
    """What ``fedit export`` writes and where it uploads it."""

    merge: bool = _opt(True, "merge the adapter into the base weights (a plain transformers model); "
                       "--no-merge exports the adapter alone (for vLLM --enable-lora, peft)")
    push_to_hub: str | None = _opt(None, "also upload the exported folder to this Hugging Face repo "
                                   "(ORG/NAME; token from HF_TOKEN or `hf auth login`)")
    private: bool = _opt(False, "create the --push-to-hub repo as private")

    def __post_init__(self) -> None:
        _Section.__post_init__(self)
        _require(self.push_to_hub is None or bool(re.fullmatch(r"[\w\-.]+/[\w\-.]+", self.push_to_hub)),
                 "push_to_hub", f"expected a repo id ORG/NAME, got {self.push_to_hub!r}")


# Sections that define CLI flags besides the run's own (their names must not clash with any).
EXTRA_SECTIONS: dict[str, type[_Section]] = {"deploy": DeployConfig, "sampling": SamplingConfig,
                                             "export": ExportConfig}
