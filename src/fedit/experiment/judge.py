"""LLM-as-judge relative scores (the FedIT paper's GPT-4 evaluation, made reproducible).

For every question a judge model behind an OpenAI-compatible ``/chat/completions`` endpoint
rates two answers from 1 to 10, in both orders (to cancel position bias), ``repeats`` times per
order. A system's score on a question is the mean over the valid verdicts; its total is the sum
over questions; the relative score of A against B is total(A) / total(B) (the paper's Table 2).

Network errors, HTTP 429/5xx and unparsable replies are retried with exponential backoff; a
verdict that still fails is counted by kind and reported, never scored. A question without any
valid verdict is left out of both totals (and counted). HTTP 401/403/404 stop the judge with an
error naming the flag to fix, instead of failing every request the same way.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from fedit.errors import ConfigError
from fedit.experiment.settings import JudgeSettings

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a careful, impartial reviewer of answers written by AI assistants. You will see a "
    "user's question and two answers, labelled Answer 1 and Answer 2. Judge how helpful, correct, "
    "relevant and complete each answer is for the question; do not reward length for its own sake "
    "and ignore the order in which the answers are shown. Give each answer an integer score from 1 "
    "(useless) to 10 (excellent). Reply with one line and nothing else, in exactly this form:\n"
    "Scores: <score of Answer 1> <score of Answer 2>"
)

USER_PROMPT = "[Question]\n{question}\n\n[Answer 1]\n{first}\n\n[Answer 2]\n{second}"

_SCORES = re.compile(r"scores?\s*:\s*(\d+(?:\.\d+)?)\s*(?:,|/|;|and|\s)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_FATAL = {401: "--judge-key-env", 403: "--judge-key-env", 404: "--judge-url"}


class Unparsable(Exception):
    pass


class Transient(Exception):
    """A failure worth retrying (network, timeout, 429, 5xx)."""


def parse_scores(reply: str) -> tuple[float, float]:
    """The two scores of a judge reply; raises Unparsable unless both are within 1..10."""
    match = _SCORES.search(reply)
    if not match:
        raise Unparsable(reply[:200])
    a, b = float(match.group(1)), float(match.group(2))
    if not (1 <= a <= 10 and 1 <= b <= 10):
        raise Unparsable(reply[:200])
    return a, b


class ChatClient:
    """Minimal OpenAI-compatible chat-completions client (standard library only)."""

    def __init__(self, settings: JudgeSettings) -> None:
        base = settings.url.rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.settings = settings

    def complete(self, messages: list[dict[str, str]]) -> str:
        s = self.settings
        body = json.dumps({"model": s.model, "messages": messages, "temperature": s.temperature,
                           "max_tokens": 32}).encode()
        headers = {"Content-Type": "application/json"}
        key = s.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.endpoint, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=s.timeout_s) as response:
                payload = json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:
            if exc.code in _FATAL:
                raise ConfigError(f"{_FATAL[exc.code]}: the judge endpoint {self.endpoint} answered HTTP "
                                  f"{exc.code} (check the URL, --judge-model and the key in ${s.key_env})") from None
            raise Transient(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
            raise Transient(f"{type(exc).__name__}: {exc}") from None
        try:
            return payload["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise Unparsable(f"no choices[0].message.content in {str(payload)[:200]}") from None


@dataclass
class PairOutcome:
    """Totals of one system pair (a, b) over the judged questions."""

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
        self.complete = complete or ChatClient(settings).complete
        self.sleep = sleep

    def verdict(self, question: str, first: str, second: str) -> tuple[tuple[float, float] | None, str | None]:
        """Scores of (first, second), retried with backoff; (None, failure kind) when it gives up."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_PROMPT.format(question=question, first=first or "(empty)",
                                                                   second=second or "(empty)")}]
        kind = None
        for attempt in range(self.settings.retries + 1):
            if attempt:
                self.sleep(self.settings.backoff_s * 2 ** (attempt - 1))
            try:
                return parse_scores(self.complete(messages)), None
            except Transient as exc:
                kind = "network"
                logger.debug("judge: %s (attempt %d)", exc, attempt + 1)
            except Unparsable as exc:
                kind = "unparsable"
                logger.debug("judge: unparsable reply %r (attempt %d)", str(exc), attempt + 1)
        return None, kind

    def compare(self, a: str, b: str, questions: Sequence[str], answers_a: Sequence[str],
                answers_b: Sequence[str], on_question: Callable[[], None] | None = None) -> PairOutcome:
        """Judge system ``a`` against ``b`` on every question (both orders, ``repeats`` times each)."""
        out = PairOutcome(a, b)
        for qi, (q, xa, xb) in enumerate(zip(questions, answers_a, answers_b, strict=True)):
            sa, sb = [], []
            for _ in range(self.settings.repeats):
                for a_first in (True, False):
                    scores, kind = self.verdict(q, xa, xb) if a_first else self.verdict(q, xb, xa)
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
