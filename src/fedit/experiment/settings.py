"""Settings of ``fedit experiment`` beyond the run config: which systems, how they are evaluated,
and the optional LLM judge. Validated on construction; every error names its flag."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fedit.config import flag
from fedit.errors import ConfigError

LOCAL_BUDGETS = ("every-round", "expected")
SYSTEM_KINDS = ("base", "local", "centralized", "fedit")
JUDGE_PROMPTS = ("fedit", "vicuna")


def _require(cond: bool, flag: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{flag}: {msg}")


@dataclass
class JudgeSettings:
    """An OpenAI-compatible chat-completions endpoint that rates pairs of answers."""

    url: str
    model: str
    key_env: str = "OPENAI_API_KEY"
    questions: str = "dolly"          # dolly = the generation subset of --test-data, or a .jsonl path
    max_questions: int | None = None
    repeats: int = 3                  # per order; 2 orders -> 2 * repeats judgments per question
    temperature: float = 0.7
    retries: int = 4
    prompt: str = "fedit"             # fedit's one-line reviewer prompt, or FastChat's Vicuna reviewer prompts
    reference: str | None = None      # FastChat answer file: every system is judged against these answers
    max_tokens: int = 1024            # the judge's reply length limit (FastChat's reviewers used 1024)
    concurrency: int = 1              # requests in flight at once (threads sharing the openai client)
    backoff_s: float = 1.0
    timeout_s: float = 120.0

    def __post_init__(self) -> None:
        _require(self.url.startswith(("http://", "https://")), "--judge-url",
                 f"expected an http(s) URL, got {self.url!r}")
        _require(bool(self.model.strip()), "--judge-model", "must not be empty")
        _require(self.repeats >= 1, "--judge-repeats", f"must be at least 1, got {self.repeats}")
        _require(self.retries >= 0, "--judge-retries", f"must be >= 0, got {self.retries}")
        _require(self.max_questions is None or self.max_questions >= 1, "--judge-max-questions",
                 f"must be at least 1, got {self.max_questions}")
        _require(0 <= self.temperature <= 2, "--judge-temperature", f"must be in [0, 2], got {self.temperature}")
        _require(self.prompt in JUDGE_PROMPTS, "--judge-prompt",
                 f"{self.prompt!r} is not one of {', '.join(JUDGE_PROMPTS)}")
        _require(self.max_tokens >= 1, "--judge-max-tokens", f"must be at least 1, got {self.max_tokens}")
        _require(self.concurrency >= 1, "--judge-concurrency", f"must be at least 1, got {self.concurrency}")
        _require(self.reference is None or self.questions != "dolly", "--judge-reference",
                 "reference answers are matched by question_id: give --judge-questions FILE too "
                 "(e.g. eval_table_question.jsonl for answer_gpt35.jsonl)")

    def api_key(self) -> str | None:
        return os.environ.get(self.key_env) or None

    def record(self) -> dict[str, Any]:
        """What results.json keeps (never the key itself)."""
        return asdict(self)


@dataclass
class ExperimentSettings:
    local_baselines: int = 3
    local_budget: str = "every-round"
    systems: list[str] = field(default_factory=lambda: list(SYSTEM_KINDS))
    gen_records: int | None = 16          # None = every test record
    max_new_tokens: int = 64
    em_categories: list[str] = field(default_factory=lambda: ["classification"])
    examples: int = 3
    seeds: int = 1                        # every trained system is repeated with seeds --seed, --seed+1, ...
    vary_partition: bool = False          # each seed also draws its own data split (default: the first seed's)
    bootstrap: int = 2000                 # paired bootstrap resamples of the test records
    confidence: float = 0.95              # of the bootstrap intervals behind every claim
    judge: JudgeSettings | None = None

    def __post_init__(self) -> None:
        _require(self.local_baselines >= 0, "--local-baselines", f"must be >= 0, got {self.local_baselines}")
        _require(self.local_budget in LOCAL_BUDGETS, "--local-budget",
                 f"{self.local_budget!r} is not one of {', '.join(LOCAL_BUDGETS)}")
        _require(self.gen_records is None or self.gen_records >= 1, "--gen-records",
                 f"must be at least 1 (or all), got {self.gen_records}")
        _require(self.max_new_tokens >= 1, "--max-new-tokens", f"must be at least 1, got {self.max_new_tokens}")
        _require(self.examples >= 0, "--examples", f"must be >= 0, got {self.examples}")
        _require(self.seeds >= 1, "--seeds", f"must be at least 1, got {self.seeds}")
        _require(self.bootstrap >= 100, "--bootstrap", f"must be at least 100, got {self.bootstrap}")
        _require(0.5 <= self.confidence < 1, "--confidence", f"must be in [0.5, 1), got {self.confidence}")
        for name in self.systems:
            known = name in ("base", "local", "centralized", "fedit") or _local_index(name) is not None
            _require(known, "--systems", f"unknown system {name!r} (known: base, local, local-1..local-K, "
                                         "centralized, fedit)")
            idx = _local_index(name)
            _require(idx is None or idx <= self.local_baselines, "--systems",
                     f"{name} needs --local-baselines {idx} or more")

    def selected(self, all_names: list[str]) -> list[str]:
        """The systems to run now, in the canonical order of ``all_names``."""
        wanted = set(self.systems)
        return [n for n in all_names if n in wanted or (n.startswith("local-") and "local" in wanted)]

    def eval_record(self) -> dict[str, Any]:
        """The evaluation settings a system's stored result must match to be reused."""
        return {"gen_records": self.gen_records, "max_new_tokens": self.max_new_tokens,
                "em_categories": sorted(self.em_categories), "decoding": "greedy"}


def _local_index(name: str) -> int | None:
    if name.startswith("local-") and name[6:].isdigit() and int(name[6:]) >= 1:
        return int(name[6:])
    return None


def check_same_config(saved: dict[str, Any], new: dict[str, Any], origin: Path) -> None:
    """Refuse a rerun on an experiment folder made with other run settings (one line naming the flag)."""
    for section, values in saved.items():
        for key, value in values.items():
            if new.get(section, {}).get(key) != value:
                raise ConfigError(f"--out: {origin} was made with {flag(key)} {value!r}, not "
                                  f"{new[section][key]!r}; use the same settings or choose another --out")
