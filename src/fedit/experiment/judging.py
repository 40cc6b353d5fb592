"""The judge step of an experiment: questions, every system's answers to them, and the pairs
to judge; verdicts are cached per pair so a rerun does not pay for them again.

Two modes (one convention: the row's system is judged against its reference, relative score =
system total / reference total):

- pairwise (default): FedIT is every other system's reference, as in the paper's Table 2;
- ``--judge-reference FILE``: every system, FedIT included, is judged against fixed reference
  answers (FastChat's answer-file schema: ``question_id``, ``text``), as in the paper's Fig. 3
  against ChatGPT's answers to the Vicuna questions.

The judge uses the first seed's systems only (verdicts cost money; the seeds' spread is in the
report's other tables).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedit.errors import ConfigError
from fedit.experiment.evaluate import answer
from fedit.experiment.judge import Judge
from fedit.fileio import atomic_write_text
from fedit.model import load_adapter_state
from fedit.progress import Progress

if TYPE_CHECKING:
    from fedit.experiment.runner import Experiment

logger = logging.getLogger(__name__)

FEDIT = "fedit"
REFERENCE = "reference"


def _jsonl(path: str, flag: str, what: str) -> list[tuple[int, dict[str, Any]]]:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{flag}: {path} is not a file ({what})")
    out = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{flag}: {path} line {n}: not JSON ({what})") from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{flag}: {path} line {n}: expected a JSON object ({what})")
        out.append((n, rec))
    return out


def load_questions(path: str) -> list[dict[str, Any]]:
    """Questions of a .jsonl file: Vicuna-80 (``text``), MT-Bench style (first of ``turns``),
    or instruction records (``instruction`` [+ ``context``/``input``]); ``question_id`` kept."""
    what = "expected 'dolly' or a .jsonl of questions with 'text', 'turns' or 'instruction'"
    out = []
    for n, rec in _jsonl(path, "--judge-questions", what):
        text = rec.get("text") or (rec.get("turns") or [None])[0] or rec.get("instruction")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"--judge-questions: {path} line {n}: expected JSON with 'text', 'turns' "
                              "or 'instruction'")
        out.append({"instruction": text, "context": str(rec.get("context") or rec.get("input") or ""),
                    "category": str(rec.get("category", "uncategorized")), "question_id": rec.get("question_id")})
    return out


def load_reference(path: str, questions: list[dict[str, Any]]) -> tuple[list[str], str]:
    """The reference answer (FastChat answer file: ``question_id``, ``text``) of every question, in
    question order, and the answers' ``model_id`` (or the file name)."""
    by_id: dict[Any, str] = {}
    model_ids = set()
    for n, rec in _jsonl(path, "--judge-reference", "FastChat answer file: question_id, text"):
        if "question_id" not in rec or not isinstance(rec.get("text"), str):
            raise ConfigError(f"--judge-reference: {path} line {n}: expected 'question_id' and 'text'")
        if rec["question_id"] in by_id:
            raise ConfigError(f"--judge-reference: {path} line {n}: question_id {rec['question_id']} appears twice")
        by_id[rec["question_id"]] = rec["text"]
        model_ids.add(str(rec.get("model_id") or ""))
    out = []
    for q in questions:
        if q["question_id"] is None:
            raise ConfigError("--judge-reference: the questions of --judge-questions have no question_id to "
                              "match the reference answers with")
        if q["question_id"] not in by_id:
            raise ConfigError(f"--judge-reference: {path} has no answer for question_id {q['question_id']}")
        out.append(by_id[q["question_id"]])
    label = ", ".join(sorted(m for m in model_ids if m)) or Path(path).name
    return out, label


def system_state(exp: Experiment, name: str):
    """A finished system's adapter (first seed), read back from --out."""
    if name == "base":
        return exp.bench.initial_state
    folder = exp.system_dir(name) / ("final" if name == FEDIT else "adapter")
    return load_adapter_state(folder)


def _question_text(q: dict[str, Any]) -> str:
    return f"{q['instruction']}\n\n{q['context']}" if q["context"].strip() else q["instruction"]


def _answers(exp: Experiment, name: str, result: dict[str, Any], questions: list[dict[str, Any]],
             source: str) -> list[str]:
    """The system's answers: its evaluation answers for dolly, else generated once and cached."""
    if source == "dolly":
        return [a["answer"] for a in result["answers"]][:len(questions)]
    cache = exp.system_dir(name) / "judge_answers.json"
    key = _digest([[{k: v for k, v in q.items() if k != "question_id"} for q in questions],
                   exp.settings.max_new_tokens])
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


def _questions(exp: Experiment) -> list[dict[str, Any]]:
    settings = exp.settings.judge
    if settings.questions == "dolly":
        questions = [{"instruction": exp.test[i].instruction, "context": exp.test[i].context,
                      "category": exp.test[i].category, "question_id": None} for i in exp.gen_idx]
    else:
        questions = load_questions(settings.questions)
    return questions[:settings.max_questions] if settings.max_questions else questions


def judge_systems(exp: Experiment, results: dict[str, Any], judge: Judge | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Judge every pair of this mode; returns the judge section of results.json."""
    settings = exp.settings.judge
    systems, source = results["systems"], settings.questions
    questions = _questions(exp)
    texts, cats = [_question_text(q) for q in questions], [q["category"] for q in questions]
    skipped = {n: "evaluated with other --gen-records settings: its answers are not the judged questions'"
               for n in systems if source == "dolly" and n in results.get("stale", {})}
    if settings.reference:
        ref_name = REFERENCE
        ref, ref_label = load_reference(settings.reference, questions)
        names = [n for n in systems if n not in skipped]
    else:
        if FEDIT not in systems or FEDIT in skipped:
            logger.warning("judge skipped: the fedit system has not finished (with these settings) in %s", exp.out)
            return {}
        ref_name, ref_label = FEDIT, "FedIT"
        ref = _answers(exp, FEDIT, systems[FEDIT], questions, source)
        names = [n for n in systems if n != FEDIT and n not in skipped]
    judge = judge or Judge(settings)
    pairs = {}
    (exp.out / "judge").mkdir(exist_ok=True)
    log = judge.record_to(exp.out / "judge.jsonl")   # every request and reply; a rerun reuses them
    for name in names:
        other = _answers(exp, name, systems[name], questions, source)
        rec = settings.record()
        key = _digest([texts, cats, ref, other, {k: rec[k] for k in ("model", "repeats", "temperature", "prompt",
                                                                     "max_tokens")}])
        cache = exp.out / "judge" / f"{name}_vs_{ref_name}.json"
        if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
            pairs[name] = json.loads(cache.read_text())["outcome"]
            continue
        with (progress or Progress()).task(f"judge {name} vs {ref_name}", len(texts)) as bar:
            outcome = judge.compare(name, ref_name, texts, other, ref, on_question=bar.advance,
                                    categories=cats).record()
        atomic_write_text(cache, json.dumps({"key": key, "outcome": outcome}, indent=1) + "\n")
        pairs[name] = outcome
        logger.info("judge: %s vs %s relative score %s", name, ref_name,
                    "n/a" if outcome["relative"] is None else f"{outcome['relative']:.3f}")
    if log.reused:
        logger.info("judge: %d replies reused from %s", log.reused, log.path)
    return {"settings": settings.record(), "mode": "reference" if settings.reference else "pairwise",
            "reference": ref_name, "reference_label": ref_label, "questions": len(questions),
            "question_source": source, "pairs": pairs, "skipped": skipped}


def no_verdicts(section: dict[str, Any]) -> str:
    """A description of the failures when no pair got a single valid verdict, else ''."""
    pairs = section.get("pairs", {})
    if not pairs or any(p.get("verdicts") for p in pairs.values()):
        return ""
    failed: dict[str, int] = {}
    for p in pairs.values():
        for kind, n in p.get("failures", {}).items():
            failed[kind] = failed.get(kind, 0) + n
    return ", ".join(f"{n} {kind}" for kind, n in sorted(failed.items())) + " verdicts failed" if failed \
        else "no verdict was returned"
