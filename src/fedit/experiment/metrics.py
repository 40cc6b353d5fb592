"""Text metrics of generated answers: ROUGE-L and a normalized exact match, per category.

ROUGE-L is the F-measure of ``rouge-score`` (Google's maintained implementation, Porter
stemming on). Exact match compares answers after SQuAD-style normalization (lower case, no
punctuation, no articles, single spaces); it is only meaningful for categories whose answers
are short labels (``classification`` by default), so it is reported for those only. Because
chat models wrap labels in sentences, ``contains_match`` (the normalized reference appears as
whole words in the normalized answer) is reported beside it.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from functools import lru_cache
from typing import Any, Iterable, Sequence

from fedit.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


@lru_cache(maxsize=1)
def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # the `eval` extra
        raise ConfigError("fedit experiment needs rouge-score: pip install 'fedit[eval]'") from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure of one answer against its reference (0 when either is empty)."""
    return float(_scorer().score(reference, prediction)["rougeL"].fmeasure)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed (as SQuAD does)."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def contains_match(prediction: str, reference: str) -> float:
    """1 when the normalized reference occurs as whole words inside the normalized answer."""
    ref = normalize_answer(reference)
    return float(bool(ref) and f" {ref} " in f" {normalize_answer(prediction)} ")


def score_answers(predictions: Sequence[str], references: Sequence[str], categories: Sequence[str],
                  em_categories: Iterable[str]) -> list[dict[str, Any]]:
    """One score record per answer: category, rouge_l and, for label-like categories, the matches."""
    em = set(em_categories)
    rows = []
    for pred, ref, cat in zip(predictions, references, categories, strict=True):
        row: dict[str, Any] = {"category": cat, "rouge_l": rouge_l(pred, ref)}
        if cat in em:
            row["exact_match"] = exact_match(pred, ref)
            row["contains_match"] = contains_match(pred, ref)
        rows.append(row)
    return rows


def _means(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"generated": len(rows)}
    for key in ("rouge_l", "exact_match", "contains_match"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key] = sum(values) / len(values)
    return out


def summarize_scores(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means ``overall`` (over all answers) and ``per_category``."""
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_cat[row["category"]].append(row)
    return {"overall": _means(rows), "per_category": {c: _means(by_cat[c]) for c in sorted(by_cat)}}
