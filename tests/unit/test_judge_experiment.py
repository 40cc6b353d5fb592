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


# --- issue 7, item 17: what is fatal, what is retried, and how long to wait -----------------------

def test_http_400_is_fatal_with_the_servers_message_and_not_retried():
    with ScriptedJudgeServer([(400, "The model `gpt-9` does not exist\nor you have no access")]) as server:
        judge = Judge(_settings(server.url, retries=4), sleep=lambda s: pytest.fail("a 400 must not be retried"))
        with pytest.raises(ConfigError) as err:
            judge.compare("base", "fedit", ["q"], ["a"], ["b"])
    assert len(server.requests) == 1
    assert str(err.value) == (f"--judge-model: the judge endpoint {server.url}/chat/completions answered HTTP 400: "
                              "The model `gpt-9` does not exist or you have no access")


@pytest.mark.parametrize("status", [404, 422])
def test_other_4xx_are_fatal(status):
    with ScriptedJudgeServer([(status, "no such route")]) as server:
        judge = Judge(_settings(server.url), sleep=lambda s: None)
        with pytest.raises(ConfigError, match=f"--judge-url: .* answered HTTP {status}: no such route$"):
            judge.compare("base", "fedit", ["q"], ["a"], ["b"])
    assert len(server.requests) == 1


def test_429_honours_retry_after_and_408_is_retried():
    script = [(429, "rate limited", {"Retry-After": "7"}), (200, "Scores: 6 3"),
              (429, "rate limited", {"retry-after-ms": "1500"}), (408, "timeout"), (200, "Scores: 3 6")]
    slept: list[float] = []
    with ScriptedJudgeServer(script) as server:
        judge = Judge(_settings(server.url, repeats=1, retries=2), sleep=slept.append)
        out = judge.compare("base", "fedit", ["q"], ["a"], ["b"])
    assert slept == [7.0, 1.5, 2.0]          # the server's wait, the server's wait, then our backoff (2nd retry)
    assert (out.total_a, out.total_b, out.verdicts) == (6.0, 3.0, 2)


def test_max_tokens_rejected_switches_to_max_completion_tokens():
    with ScriptedJudgeServer([(200, "Scores: 8 2"), (200, "Scores: 2 8")], reject_max_tokens=True) as server:
        judge = Judge(_settings(server.url, repeats=1, max_tokens=64), sleep=lambda s: pytest.fail("no backoff"))
        out = judge.compare("base", "fedit", ["q"], ["a"], ["b"])
    bodies = [r["body"] for r in server.requests]
    assert [("max_tokens" in b, b.get("max_completion_tokens")) for b in bodies] == [(True, None), (False, 64),
                                                                                  (False, 64)]
    assert (out.verdicts, out.total_a, out.total_b) == (2, 8.0, 2.0)


def test_a_dead_endpoint_stops_the_judge_after_three_failed_verdicts():
    with ScriptedJudgeServer([]) as server:
        url = server.url                        # closed: every connection is refused
    slept: list[float] = []
    judge = Judge(_settings(url, repeats=2, retries=1, timeout_s=2), sleep=slept.append)
    with pytest.raises(ConfigError, match=r"^--judge-url: 3 verdicts in a row failed after 1 retries each "
                                          r"\(last: APIConnectionError: Connection error\.\); the judge stops$"):
        judge.compare("base", "fedit", ["q1", "q2"], ["a1", "a2"], ["b1", "b2"])
    assert slept == [1.0, 1.0, 1.0]


def test_no_key_sends_no_authorization_and_never_reads_openai_api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.delenv("FEDIT_TEST_JUDGE_KEY", raising=False)
    with ScriptedJudgeServer([(200, "Scores: 5 5")]) as server:
        Judge(_settings(server.url, repeats=1), sleep=lambda s: None).verdict("q", "a", "b")
    assert server.requests[0]["auth"] is None


def test_vicuna_prompt_is_fastchats_and_its_replies_are_parsed():
    from fedit.experiment.prompts import VICUNA_SYSTEM, parse_vicuna

    script = [(200, "8 6\nAssistant 1 is more detailed."), (200, "7, 9\nAssistant 2 ..."),
              (200, "First I solve it ... so the scores are (3, 9)")]
    with ScriptedJudgeServer(script) as server:
        judge = Judge(_settings(server.url, repeats=1, prompt="vicuna"), sleep=lambda s: None)
        out = judge.compare("base", "reference", ["How can I sleep better?", "What is 2+2?"], ["A1", "A2"],
                            ["R1", "R2"], categories=["generic", "math"])
    messages = [r["body"]["messages"] for r in server.requests]
    assert messages[0][0] == {"role": "system", "content": VICUNA_SYSTEM}
    assert messages[0][1]["content"].startswith("[Question]\nHow can I sleep better?\n\n[The Start of Assistant 1's "
                                                "Answer]\nA1\n\n[The End of Assistant 1's Answer]\n\n")
    assert "Please rate the helpfulness, relevance, accuracy, level of details" in messages[0][1]["content"]
    assert "Finally, please output a Python tuple" in messages[2][1]["content"]   # math questions: math prompt
    assert server.first_answer(1) == "R1"
    # q1: A 8 (first), A 9 (second order); q2: A first: (3, 9) -> A 3; second: no reply left -> "Scores: 5 5"
    assert out.per_question[0] == {"question": 0, "score_a": 8.5, "score_b": 6.5, "verdicts": 2}
    assert parse_vicuna("7.5 8") == (7.5, 8.0)
    for bad in ("Assistant 1: 7", "8 6 5", "0 5", ""):
        with pytest.raises(Exception):
            parse_vicuna(bad)
