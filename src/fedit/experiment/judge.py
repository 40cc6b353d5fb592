"""LLM-as-judge relative scores (the FedIT paper's GPT-4 evaluation, made reproducible).

For every question a judge model behind an OpenAI-compatible ``/chat/completions`` endpoint
rates two answers from 1 to 10, in both orders (to cancel position bias), ``repeats`` times per
order, with fedit's prompt or FastChat's Vicuna reviewer prompts (``fedit.experiment.prompts``).
A system's score on a question is the mean over the valid verdicts; its total is the sum over
questions. The relative score of a system against its reference (FedIT, or fixed reference
answers such as ChatGPT's) is total(system) / total(reference): one convention everywhere.

Transport errors are retried in :mod:`fedit.experiment.judge_client` (fatal 4xx stop the judge
with the server's message); an unparsable reply is asked again ``retries`` times, then counted,
never scored. A question without any valid verdict is left out of both totals (and counted). A
judge whose requests keep failing after their retries stops after ``MAX_FAILURES_IN_A_ROW``
verdicts in a row instead of spending hours on a dead endpoint.

``--judge-concurrency N`` sends up to N requests at once (threads sharing the openai client); the
totals do not depend on N, as every verdict is collected in question order. :meth:`Judge.record_to`
saves every request and reply (``judge.jsonl``, :mod:`fedit.experiment.judge_log`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from fedit.experiment.judge_client import ChatClient, JudgeError, TransportFailure
from fedit.experiment.judge_log import JudgeLog
from fedit.experiment.prompts import PROMPTS, Unparsable, parse_fedit
from fedit.experiment.settings import JudgeSettings

logger = logging.getLogger(__name__)

MAX_FAILURES_IN_A_ROW = 3
parse_scores = parse_fedit   # the default prompt's parser (kept under its old name)

__all__ = ["Judge", "JudgeError", "PairOutcome", "Unparsable", "parse_scores"]


@dataclass
class PairOutcome:
    """Totals of one system pair over the judged questions: ``a`` is judged against ``b``."""

    a: str
    b: str
    total_a: float = 0.0
    total_b: float = 0.0
    questions: int = 0
    verdicts: int = 0
    unscored_questions: int = 0
    failures: Counter = field(default_factory=Counter)
    per_question: list[dict[str, Any]] = field(default_factory=list)

    @property
    def relative(self) -> float | None:
        """total(a) / total(b); None when nothing could be scored."""
        return self.total_a / self.total_b if self.total_b > 0 else None

    def record(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "total_a": self.total_a, "total_b": self.total_b,
                "relative": self.relative, "questions": self.questions, "verdicts": self.verdicts,
                "unscored_questions": self.unscored_questions, "failures": dict(self.failures),
                "per_question": self.per_question}


class Judge:
    def __init__(self, settings: JudgeSettings, complete: Callable[[list[dict[str, str]]], str] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.prompt = PROMPTS[settings.prompt]
        self.complete = complete or ChatClient(settings, sleep=sleep).complete
        self.failures_in_a_row = 0
        self.lock = threading.Lock()

    def record_to(self, path: Path) -> JudgeLog:
        """Save every request and reply to ``path`` and answer from it what it already holds."""
        if not isinstance(self.complete, JudgeLog):
            self.complete = JudgeLog(path, self.complete, self.settings)
        return self.complete

    def verdict(self, question: str, first: str, second: str, category: str = ""
                ) -> tuple[tuple[float, float] | None, str | None]:
        """Scores of (first, second); (None, failure kind) when it gives up."""
        messages = self.prompt.build(question, category, first or "(empty)", second or "(empty)")
        for attempt in range(self.settings.retries + 1):
            try:
                reply = self.complete(messages)
            except TransportFailure as exc:
                with self.lock:
                    self.failures_in_a_row += 1
                    failed = self.failures_in_a_row
                if failed >= MAX_FAILURES_IN_A_ROW:
                    raise JudgeError(f"--judge-url: {failed} verdicts in a row failed after "
                                     f"{self.settings.retries} retries each (last: {exc}); the judge stops") from None
                logger.warning("judge: a verdict failed after %d retries: %s", self.settings.retries, exc)
                return None, "network"
            with self.lock:
                self.failures_in_a_row = 0
            try:
                return self.prompt.parse(reply), None
            except Unparsable as exc:
                logger.debug("judge: unparsable reply %r (attempt %d)", str(exc), attempt + 1)
        return None, "unparsable"

    def compare(self, a: str, b: str, questions: Sequence[str], answers_a: Sequence[str],
                answers_b: Sequence[str], on_question: Callable[[], None] | None = None,
                categories: Sequence[str] | None = None) -> PairOutcome:
        """Judge system ``a`` against ``b`` on every question (both orders, ``repeats`` times each)."""
        out = PairOutcome(a, b)
        cats = categories or [""] * len(questions)
        rows = list(zip(questions, answers_a, answers_b, cats, strict=True))
        for qi, verdicts in enumerate(self._verdicts(rows)):
            sa, sb = [], []
            for a_first, (scores, kind) in verdicts:
                if scores is None:
                    out.failures[kind] += 1
                    continue
                sa.append(scores[0] if a_first else scores[1])
                sb.append(scores[1] if a_first else scores[0])
            out.questions += 1
            out.verdicts += len(sa)
            if sa:
                out.total_a += sum(sa) / len(sa)
                out.total_b += sum(sb) / len(sb)
            else:
                out.unscored_questions += 1
            out.per_question.append({"question": qi, "score_a": sum(sa) / len(sa) if sa else None,
                                     "score_b": sum(sb) / len(sb) if sb else None, "verdicts": len(sa)})
            if on_question is not None:
                on_question()
        if out.failures:
            logger.warning("judge %s vs %s: %d verdicts failed (%s), %d questions unscored", a, b,
                           sum(out.failures.values()), dict(out.failures), out.unscored_questions)
        return out

    def _verdicts(self, rows: list[tuple[str, str, str, str]]) -> Iterator[list[tuple[bool, tuple]]]:
        """Per question, in order: [(a_first, verdict)] for ``repeats`` x both orders; with
        ``concurrency`` > 1 every request is submitted at once to that many threads."""
        def one(row: tuple[str, str, str, str], a_first: bool) -> tuple[bool, tuple]:
            q, xa, xb, cat = row
            return a_first, (self.verdict(q, xa, xb, cat) if a_first else self.verdict(q, xb, xa, cat))

        orders = [a_first for _ in range(self.settings.repeats) for a_first in (True, False)]
        if self.settings.concurrency <= 1:
            for row in rows:
                yield [one(row, a_first) for a_first in orders]
            return
        with ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="judge") as pool:
            futures = [[pool.submit(one, row, a_first) for a_first in orders] for row in rows]
            try:
                for question in futures:
                    yield [f.result() for f in question]
            finally:
                for f in (f for question in futures for f in question):
                    f.cancel()
