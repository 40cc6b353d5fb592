"""The per-client view of ``fedit experiment`` (with ``--client-test-fraction``): should this client
join, and what does it get? For every client (a seeded sample of at most :data:`MAX_CLIENTS` when
there are more), its held-out share of its own records is scored under

- ``local``: an adapter trained on its training records alone (the local-j budget rule of the
  experiment: R x S_k steps, or round(R x m/N x S_k) with --local-budget expected; cached in
  ``systems/per_client/client_NNN``),
- ``global``: the federated run's final global adapter,
- ``personalized``: its personal adapter from that run (``systems/fedit/personal/client_NNN``; null
  without --personalization),

each loss per record, so that global and personalized are compared with local by the experiment's
paired bootstrap (fedit.experiment.stats) and a verdict is drawn per client: joining helped, hurt, or
no evidence (the interval includes no change). First seed only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fedit.data.prompts import TokenizedExample
from fedit.eval import per_example_losses
from fedit.experiment.stats import Arrays, mean_sd, paired_bootstrap, verdict
from fedit.experiment.systems import SystemSpec, client_steps
from fedit.experiment.training import train_baseline
from fedit.model import AdapterState, load_adapter_state, set_adapter_state
from fedit.model.dual import dual_adapter
from fedit.runners.common import Workbench, data_seed, load_client_split
from fedit.runners.personal import client_folder

logger = logging.getLogger(__name__)

MAX_CLIENTS = 20
VERDICTS = {"better": "joining helped", "worse": "joining hurt"}


def sample_clients(n: int, seed: int) -> list[int]:
    """Every client, or a seeded sample of MAX_CLIENTS of them (sorted)."""
    if n <= MAX_CLIENTS:
        return list(range(n))
    return sorted(np.random.default_rng([seed, 11]).choice(n, size=MAX_CLIENTS, replace=False).tolist())


def record_arrays(bench: Workbench, test_tok: Sequence[TokenizedExample], batch_size: int,
                  state: AdapterState, local: AdapterState | None = None) -> Arrays:
    """(loss sums, response tokens) per record of the model with ``state`` (and a dual local adapter)."""
    def losses() -> list[tuple[float, int]]:
        return per_example_losses(bench.model, test_tok, device=bench.base.device,
                                  autocast_dtype=bench.base.autocast_dtype, pad_id=bench.tokenizer.pad_token_id,
                                  batch_size=batch_size)
    if local is None:
        set_adapter_state(bench.model, state)
        pairs = losses()
    else:
        with dual_adapter(bench.model, state, local, bench.initial_state, train=False):
            pairs = losses()
    return np.array([a for a, _ in pairs], dtype=float), np.array([t for _, t in pairs], dtype=float)


def personal_state(folder: Path, global_state: AdapterState) -> tuple[AdapterState, AdapterState | None]:
    """A personal adapter folder as (adapter, dual local adapter or None): a folder of twice the rank
    is split back into the global and the local adapter."""
    state = load_adapter_state(folder)
    key = next(k for k in global_state if ".lora_A." in k)
    if state[key].shape == global_state[key].shape:
        return state, None
    r = global_state[key].shape[0]
    glob = {k: v[:, :r] if ".lora_B." in k else v[:r] for k, v in state.items()}
    local = {k: v[:, r:] if ".lora_B." in k else v[r:] for k, v in state.items()}
    return {k: v.contiguous() for k, v in glob.items()}, {k: v.contiguous() for k, v in local.items()}


def _loss(arrays: Arrays) -> float:
    return float(arrays[0].sum() / max(arrays[1].sum(), 1.0))


def _compare(x: Arrays, local: Arrays, settings: Any, seed: int) -> dict[str, Any]:
    ci = paired_bootstrap([x], [local], resamples=settings.bootstrap, confidence=settings.confidence, seed=seed)
    v = verdict(ci, higher_is_better=False)
    return {**ci.record(), "verdict": VERDICTS.get(v, "no evidence")}


def per_client_view(exp: Any, tracker: Any) -> list[dict[str, Any]] | None:
    """The ``per_client`` entries of results.json (None without --client-test-fraction or a fedit run)."""
    plan, bench = exp.first, exp.bench
    cfg = plan.cfg
    fedit_dir = exp.system_dir("fedit", plan)
    if cfg.data.client_test_fraction is None or not (fedit_dir / "final").is_dir():
        return None
    _, tests, _ = load_client_split(cfg)
    global_state = load_adapter_state(fedit_dir / "final")
    rounds, m, n = cfg.federation.rounds, cfg.federation.clients_to_sample(len(tests)), len(tests)
    out = []
    for cid in sample_clients(n, data_seed(cfg)):
        test_tok = bench.tokenize(tests[cid], cfg.data, train_on_prompt=False)
        steps = client_steps(len(plan.client_tok[cid]), cfg.train)
        budget = rounds * steps if exp.settings.local_budget == "every-round" else max(1, round(rounds * m / n * steps))
        spec = SystemSpec(f"client-{cid}-local", "local", cid, budget)
        local_state, _ = train_baseline(bench, plan, spec, fedit_dir.parent / "per_client" / f"client_{cid:03d}",
                                        tracker)
        bs = cfg.federation.eval_batch_size
        arrays = {"local": record_arrays(bench, test_tok, bs, local_state),
                  "global": record_arrays(bench, test_tok, bs, global_state)}
        folder = client_folder(fedit_dir, cid)
        if folder.is_dir():
            arrays["personalized"] = record_arrays(bench, test_tok, bs, *personal_state(folder, global_state))
        entry: dict[str, Any] = {"client": cid, "records": len(tests[cid]), "scored": len(test_tok),
                                 "train_records": len(plan.clients[cid]), "local_steps": budget,
                                 **{k: _loss(v) for k, v in arrays.items()}}
        entry.setdefault("personalized", None)
        for name in ("global", "personalized"):
            if name in arrays:
                entry[f"{name}_vs_local"] = _compare(arrays[name], arrays["local"], exp.settings, cid)
        best = entry.get("personalized_vs_local") or entry["global_vs_local"]
        entry["verdict"] = best["verdict"]
        out.append(entry)
        logger.info("client %d: local %.4f, global %.4f, personalized %s: %s", cid, entry["local"], entry["global"],
                    "-" if entry["personalized"] is None else f"{entry['personalized']:.4f}", entry["verdict"])
    return out


def per_client_summary(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The share of clients that gained, the worst client and the spread of the gains across clients."""
    which = "personalized" if entries and entries[0]["personalized"] is not None else "global"
    deltas = [e[which] - e["local"] for e in entries]
    mean, sd = mean_sd(deltas)
    worst = max(range(len(entries)), key=lambda i: deltas[i]) if entries else None
    count = {v: sum(e["verdict"] == v for e in entries) for v in ("joining helped", "joining hurt", "no evidence")}
    return {"model": which, "clients": len(entries), "verdicts": count,
            "share_gained": count["joining helped"] / len(entries) if entries else None,
            "worst_client": None if worst is None else {"client": entries[worst]["client"], "delta": deltas[worst]},
            "delta_mean": mean, "delta_sd": sd, "delta_min": min(deltas, default=None),
            "delta_max": max(deltas, default=None)}


def add_per_client(exp: Any, results: dict[str, Any]) -> None:
    """``results["per_client"]`` and ``results["per_client_summary"]`` when the experiment has them."""
    from fedit.experiment.tracking import ExperimentProgress

    with ExperimentProgress(exp.progress, float(len(exp.clients))) as tracker:
        entries = per_client_view(exp, tracker)
    if entries is not None:
        results["per_client"] = entries
        results["per_client_summary"] = per_client_summary(entries)
