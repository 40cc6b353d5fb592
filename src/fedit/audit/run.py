"""``fedit audit --run RUN``: the update attack and the canary audit on a finished run, written to
``RUN/audit.json`` beside the accountant's epsilon. Seeded (``--audit-seed``); its choices (target
client, records, views, canaries) are recorded in the file."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from fedit.audit.canary_audit import canary_audit, pick
from fedit.audit.update_attack import update_attack
from fedit.data import Example
from fedit.errors import ConfigError
from fedit.eval.loss import per_example_losses
from fedit.fileio import atomic_write_text
from fedit.model import set_adapter_state
from fedit.privacy.canaries import CANARIES_FILE, read_canaries
from fedit.runners.checkpoint import latest_checkpoint, load_checkpoint
from fedit.runners.common import Workbench, build_workbench, load_clients
from fedit.runners.rundir import RunDir

logger = logging.getLogger(__name__)

AUDIT_FILE = "audit.json"


class Scorer:
    """Per-record mean response-token loss under an adapter, on the resident model."""

    def __init__(self, bench: Workbench, cfg: Any) -> None:
        self.bench, self.cfg = bench, cfg

    def tokens(self, examples: Sequence[Example]):
        return self.bench.tokenize(examples, self.cfg.data, train_on_prompt=False)

    def fits(self, example: Example) -> bool:
        return bool(self.tokens([example]))

    def __call__(self, state: dict, examples: Sequence[Example]) -> list[float]:
        toks = self.tokens(examples)
        if len(toks) != len(examples):
            raise ConfigError(f"fedit audit: {len(examples) - len(toks)} candidate record(s) do not fit --max-len "
                              f"{self.cfg.data.max_len}")
        set_adapter_state(self.bench.model, state)
        pairs = per_example_losses(self.bench.model, toks, device=self.bench.base.device,
                                   autocast_dtype=self.bench.base.autocast_dtype,
                                   pad_id=self.bench.tokenizer.pad_token_id, batch_size=self.cfg.federation.eval_batch_size)
        return [s / n if n else math.nan for s, n in pairs]


def accountant_epsilon(run_dir: RunDir) -> dict[str, Any]:
    rounds = [r for r in run_dir.metrics.read() if r.get("type") == "round" and "dp_epsilon" in r]
    if not rounds:
        return {"epsilon": None, "delta": None, "note": "no client-level DP: no finite epsilon"}
    last = rounds[-1]
    out = {"epsilon": last["dp_epsilon"], "delta": last["dp_delta"], "releases": last.get("dp_releases"),
           "accounting": last.get("dp_accounting", "RDP, fixed-size sampling, replace-one")}
    if last["dp_epsilon"] is None:   # metrics.jsonl holds an infinite epsilon (noise multiplier 0) as null
        out.update(infinite=True, note="client-level DP with noise multiplier 0: epsilon is infinite")
    return out



def run_audit(run: str | Path, *, seed: int = 0, records: int = 32, canaries: int | None = None,
              references: int = 63, confidence: float = 0.95, bench: Workbench | None = None) -> dict[str, Any]:
    """Audit the run in ``run``; ``canaries``: None = all of the run's (if any), 0 = skip them."""
    run_dir = RunDir(Path(run))
    cfg = run_dir.saved_config()
    if cfg is None:
        raise ConfigError(f"--run {run}: not a fedit run directory (no config.yaml)")
    personal = cfg.personalization.personalization
    if personal in ("fedsa", "dual"):   # the audit scores the shared adapter alone: not what such a client trained
        raise ConfigError(f"--run {run}: trained with --personalization {personal}, whose clients keep part of the "
                          "model; the audit scores the shared adapter alone and would measure nothing: not supported")
    has_canaries = (run_dir.path / CANARIES_FILE).is_file()
    record = read_canaries(run_dir.path) if canaries or has_canaries else None  # none: a one-line refusal
    if record is not None and canaries:
        pick(record, canaries)   # refuses more canaries than the run inserted, before the model loads
    ckpt_path = latest_checkpoint(run_dir.path)
    if ckpt_path is None:
        raise ConfigError(f"--run {run}: no checkpoint (has the run finished a round?)")
    ckpt = load_checkpoint(ckpt_path)   # the newest global adapter: the final one
    bench = bench if bench is not None else build_workbench(cfg)
    score = Scorer(bench, cfg)
    clients = [[ex for ex in c if score.fits(ex)] for c in load_clients(cfg)]
    account = accountant_epsilon(run_dir)
    delta = account["delta"] or cfg.privacy.dp_delta
    result: dict[str, Any] = {"run": str(run_dir.path), "seed": seed, "accountant": account,
                              "final_round": ckpt.round}
    # the update of a client's first round: from the run's initial adapter, which has seen none of its data
    result["update_attack"] = update_attack(bench.trainer, cfg, clients, bench.initial_state, 1, score,
                                            lambda examples: bench.tokenize(examples, cfg.data), records=records,
                                            seed=seed)
    if has_canaries and canaries != 0:
        result["canaries"] = canary_audit(score, dict(ckpt.adapter), bench.initial_state, record,
                                          count=canaries, references=references, seed=seed, delta=delta,
                                          confidence=confidence)
    atomic_write_text(run_dir.path / AUDIT_FILE, json.dumps(result, indent=2, allow_nan=False) + "\n")
    return result
