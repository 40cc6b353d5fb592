"""Evaluate one system's adapter on the held-out data: response loss / perplexity on every test
record (``fedit.eval.per_example_losses``, kept per record for the paired bootstrap), greedy
answers on a category-stratified subset (``fedit.eval.generate_answers``) scored with ROUGE-L and,
for label-like categories, exact match.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from fedit.data import Example
from fedit.data.prompts import TokenizedExample
from fedit.eval import generate_answers, per_example_losses, summarize_losses
from fedit.experiment.metrics import score_answers, summarize_scores
from fedit.model import AdapterState, set_adapter_state
from fedit.runners.common import Workbench

GEN_BATCH = 8


def generation_subset(test: Sequence[Example], limit: int | None, seed: int) -> list[int]:
    """Indices of the test records to generate for: categories taken in turn (each shuffled with
    its own seeded RNG) so every category is represented; returned in test order."""
    if limit is None or limit >= len(test):
        return list(range(len(test)))
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(test):
        by_cat[ex.category].append(i)
    rng = np.random.default_rng([seed, 3])
    queues = [list(rng.permutation(by_cat[c])) for c in sorted(by_cat)]
    picked: list[int] = []
    while len(picked) < limit:
        for q in queues:
            if q and len(picked) < limit:
                picked.append(int(q.pop(0)))
    return sorted(picked)


def answer(bench: Workbench, state: AdapterState, prompts: Sequence[tuple[str, str]], *, template: str,
           max_new_tokens: int, on_batch=None) -> list[str]:
    """Greedy answers of the model carrying ``state``, in batches (``on_batch`` after each)."""
    set_adapter_state(bench.model, state)
    out: list[str] = []
    for start in range(0, len(prompts), GEN_BATCH):
        out += generate_answers(bench.model, bench.tokenizer, prompts[start:start + GEN_BATCH],
                                template=template, device=bench.base.device,
                                autocast_dtype=bench.base.autocast_dtype, max_new_tokens=max_new_tokens,
                                batch_size=GEN_BATCH)
        if on_batch is not None:
            on_batch()
    return out


def merge(loss: dict[str, Any], text: dict[str, Any]) -> dict[str, Any]:
    """One ``overall`` / ``per_category`` table from the loss figures and the text metrics."""
    cats = sorted(set(loss["per_category"]) | set(text["per_category"]))
    return {"overall": {**loss["overall"], **text["overall"]},
            "per_category": {c: {**loss["per_category"].get(c, {}), **text["per_category"].get(c, {})}
                             for c in cats}}


def record_losses(bench: Workbench, state: AdapterState, test_tok: Sequence[TokenizedExample],
                  batch_size: int) -> tuple[dict[str, Any], dict[str, list]]:
    """The loss figures (overall, per category) and the per-record ``loss_sum`` / ``tokens`` lists."""
    set_adapter_state(bench.model, state)
    losses = per_example_losses(bench.model, test_tok, device=bench.base.device,
                                autocast_dtype=bench.base.autocast_dtype, pad_id=bench.tokenizer.pad_token_id,
                                batch_size=batch_size)
    return summarize_losses(test_tok, losses), {"loss_sum": [a for a, _ in losses], "tokens": [t for _, t in losses]}


def evaluate_system(bench: Workbench, state: AdapterState, test_tok: Sequence[TokenizedExample],
                    test: Sequence[Example], gen_idx: Sequence[int], *, template: str, eval_batch_size: int,
                    max_new_tokens: int, em_categories: Sequence[str], on_batch=None) -> dict[str, Any]:
    """Loss figures on every test record (kept per record) plus text metrics on ``gen_idx``."""
    loss, records = record_losses(bench, state, test_tok, eval_batch_size)
    gen = [test[i] for i in gen_idx]
    answers = answer(bench, state, [(e.instruction, e.context) for e in gen], template=template,
                     max_new_tokens=max_new_tokens, on_batch=on_batch)
    rows = score_answers(answers, [e.response for e in gen], [e.category for e in gen], em_categories)
    result = merge(loss, summarize_scores(rows))
    result["records"] = {**records, "category": [ex.category for ex in test_tok]}
    result["answers"] = [{"test_index": i, "category": e.category, "answer": a, **{k: v for k, v in r.items()
                                                                                   if k != "category"}}
                         for i, e, a, r in zip(gen_idx, gen, answers, rows)]
    return result
