"""The judge step of an experiment: questions, every system's answers to them, FedIT against
every other system; verdicts are cached per pair so a rerun does not pay for them again."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.errors import ConfigError
from fedit.experiment.evaluate import answer
from fedit.experiment.judge import Judge
from fedit.model import load_adapter_state
from fedit.progress import Progress
from fedit.fileio import atomic_write_text

if TYPE_CHECKING:
    from fedit.experiment.runner import Experiment

logger = logging.getLogger(__name__)

REFERENCE = "fedit"


def load_questions(path: str) -> list[dict[str, str]]:
    """Questions of a .jsonl file: Vicuna-80 (``text``), MT-Bench style (first of ``turns``),
    or instruction records (``instruction`` [+ ``context``/``input``])."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--judge-questions: {path} is neither 'dolly' nor a .jsonl file")
    out = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            text = rec.get("text") or (rec.get("turns") or [None])[0] or rec["instruction"]
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise ConfigError(f"--judge-questions: {path} line {n}: expected JSON with 'text', 'turns' "
                              "or 'instruction'") from None
        out.append({"instruction": str(text), "context": str(rec.get("context") or rec.get("input") or ""),
                    "category": str(rec.get("category", "uncategorized"))})
    return out


def system_state(exp: Experiment, name: str):
    """A finished system's adapter, read back from --out."""
    if name == "base":
        return exp.bench.initial_state
    folder = exp.system_dir(name) / ("final" if name == "fedit" else "adapter")
    return load_adapter_state(folder)


def _question_text(q: dict[str, str]) -> str:
    return f"{q['instruction']}\n\n{q['context']}" if q["context"].strip() else q["instruction"]


def _answers(exp: Experiment, name: str, result: dict[str, Any], questions: list[dict[str, str]],
             source: str) -> list[str]:
    """The system's answers: its evaluation answers for dolly, else generated once and cached."""
    if source == "dolly":
        return [a["answer"] for a in result["answers"]][:len(questions)]
    cache = exp.system_dir(name) / "judge_answers.json"
    key = _digest([questions, exp.settings.max_new_tokens])
    if cache.is_file():
        stored = json.loads(cache.read_text())
        if stored.get("key") == key:
            return stored["answers"]
    answers = answer(exp.bench, system_state(exp, name), [(q["instruction"], q["context"]) for q in questions],
                     template=exp.cfg.data.template, max_new_tokens=exp.settings.max_new_tokens)
    atomic_write_text(cache, json.dumps({"key": key, "answers": answers}, indent=1) + "\n")
    return answers


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def judge_systems(exp: Experiment, systems: dict[str, dict[str, Any]], judge: Judge | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """FedIT against every other finished system; returns the judge section of results.json."""
    settings = exp.settings.judge
    source = settings.questions
    if source == "dolly":
        questions = [{"instruction": exp.test[i].instruction, "context": exp.test[i].context,
                      "category": exp.test[i].category} for i in exp.gen_idx]
    else:
        questions = load_questions(source)
    questions = questions[:settings.max_questions] if settings.max_questions else questions
    if REFERENCE not in systems:
        logger.warning("judge skipped: the fedit system has not finished in %s", exp.out)
        return {}
    judge = judge or Judge(settings)
    texts = [_question_text(q) for q in questions]
    ref = _answers(exp, REFERENCE, systems[REFERENCE], questions, source)
    pairs = {}
    (exp.out / "judge").mkdir(exist_ok=True)
    for name, result in systems.items():
        if name == REFERENCE:
            continue
        other = _answers(exp, name, result, questions, source)
        key = _digest([texts, ref, other, settings.model, settings.repeats, settings.temperature])
        cache = exp.out / "judge" / f"{REFERENCE}_vs_{name}.json"
        if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
            pairs[name] = json.loads(cache.read_text())["outcome"]
            continue
        with (progress or Progress()).task(f"judge fedit vs {name}", len(texts)) as bar:
            outcome = judge.compare(REFERENCE, name, texts, ref, other, on_question=bar.advance).record()
        atomic_write_text(cache, json.dumps({"key": key, "outcome": outcome}, indent=1) + "\n")
        pairs[name] = outcome
        logger.info("judge: fedit vs %s relative score %s", name,
                    "n/a" if outcome["relative"] is None else f"{outcome['relative']:.3f}")
    rec = settings.record()
    return {"settings": rec, "questions": len(questions), "question_source": source,
            "pairs": pairs}
