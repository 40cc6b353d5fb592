"""LLM judge scoring, talking HTTP to a local test double of the chat-completions endpoint."""

from __future__ import annotations

import pytest
from judge_double import ScriptedJudgeServer  # tests/judge_double.py (tests/ is on sys.path via conftest)

from fedit.errors import ConfigError
from fedit.experiment.judge import Judge, parse_scores
from fedit.experiment.settings import JudgeSettings


def _settings(url: str, **kw) -> JudgeSettings:
    return JudgeSettings(**{"url": url, "model": "judge-test", "key_env": "FEDIT_TEST_JUDGE_KEY", "retries": 1,
                            **kw})


def test_both_orders_averaging_retry_and_unparsable(monkeypatch):
    monkeypatch.setenv("FEDIT_TEST_JUDGE_KEY", "secret")
    script = [(500, "overloaded"),           # retried ...
              (200, "Scores: 8 4"),          # ... A first: A 8, B 4
              (200, "Scores: 3 7"),          # B first: A 7, B 3
              (200, "scores: 9, 5"),         # A first: A 9, B 5
              (200, "Scores: 2 6"),          # B first: A 6, B 2
              (200, "Both answers are fine."),   # A first: unparsable, retried ...
              (200, "I cannot decide"),          # ... unparsable again: counted, not scored
              (200, "Scores: 4 10")]         # B first: A 10, B 4
    slept: list[float] = []
    with ScriptedJudgeServer(script) as server:
        judge = Judge(_settings(server.url, repeats=3), sleep=slept.append)
        out = judge.compare("fedit", "base", ["What is a whale?"], ["A-ANSWER"], ["B-ANSWER"])
    assert len(server.requests) == 8
    assert all(r["path"] == "/v1/chat/completions" for r in server.requests)
    assert server.requests[0]["auth"] == "Bearer secret"
    assert server.requests[0]["body"]["model"] == "judge-test"
    # both orders: A first in verdicts 1 and 3, B first in 2 and 4
    assert [server.first_answer(i) for i in (1, 2, 3, 4, 7)] == ["A-ANSWER", "B-ANSWER", "A-ANSWER",
                                                                 "B-ANSWER", "B-ANSWER"]
    assert slept == [1.0]                    # one backoff, for the 500 (an unparsable reply is asked again at once)
    assert out.verdicts == 5
    assert dict(out.failures) == {"unparsable": 1}
    assert out.total_a == pytest.approx((8 + 7 + 9 + 6 + 10) / 5)
    assert out.total_b == pytest.approx((4 + 3 + 5 + 2 + 4) / 5)
    assert out.relative == pytest.approx(8.0 / 3.6)
    assert out.unscored_questions == 0


def test_totals_over_questions_and_unscored_question():
    # question 1: A 6 B 3 in both orders; question 2: nothing parsable -> left out of both totals
    script = [(200, "Scores: 6 3"), (200, "Scores: 3 6"), (200, "nope"), (200, "nope"),
              (200, "nope"), (200, "nope")]
    with ScriptedJudgeServer(script) as server:
        judge = Judge(_settings(server.url, repeats=1, retries=0), sleep=lambda s: None)
        out = judge.compare("fedit", "local-1", ["q1", "q2"], ["a1", "a2"], ["b1", "b2"])
    assert (out.total_a, out.total_b) == (6.0, 3.0)
    assert out.relative == pytest.approx(2.0)
    assert out.unscored_questions == 1
    assert dict(out.failures) == {"unparsable": 2}


def test_network_errors_are_retried_then_counted():
    with ScriptedJudgeServer([]) as server:
        url = server.url
    slept: list[float] = []
    judge = Judge(_settings(url, repeats=1, retries=2, timeout_s=2), sleep=slept.append)
    out = judge.compare("fedit", "base", ["q"], ["a"], ["b"])
    assert dict(out.failures) == {"network": 2}
    assert slept == [1.0, 2.0, 1.0, 2.0]     # exponential backoff, per verdict
    assert out.relative is None


def test_bad_key_stops_with_the_flag_named():
    with ScriptedJudgeServer([(401, "invalid api key")]) as server:
        judge = Judge(_settings(server.url), sleep=lambda s: None)
        with pytest.raises(ConfigError, match="--judge-key-env"):
            judge.compare("fedit", "base", ["q"], ["a"], ["b"])


def test_parse_scores():
    assert parse_scores("Scores: 7 3") == (7.0, 3.0)
    assert parse_scores("Sure.\nScores: 7.5/10") == (7.5, 10.0)
    for bad in ("7 3", "Scores: 0 5", "Scores: 11 2", "Scores: seven"):
        with pytest.raises(Exception):
            parse_scores(bad)
