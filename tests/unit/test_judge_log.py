"""Issue 19.8: the judge saves every request and reply (judge.jsonl) and a rerun reuses them,
--judge-concurrency, the endpoint and model name checked first, and a non-JSON reply named as such
(against tests/judge_double.py, a local test double of an OpenAI-compatible endpoint)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from judge_double import ScriptedJudgeServer  # tests/judge_double.py

from fedit.experiment.judge import Judge
from fedit.experiment.judge_client import ChatClient, JudgeError
from fedit.experiment.settings import JudgeSettings

QUESTIONS, A, B = ["q1", "q2", "q3"], ["a1", "a2", "a3"], ["b1", "b2", "b3"]


def _settings(url: str = "http://judge.invalid/v1", **kw) -> JudgeSettings:
    return JudgeSettings(**{"url": url, "model": "judge-test", "key_env": "FEDIT_TEST_JUDGE_KEY", "retries": 1,
                            "repeats": 2, **kw})


def scripted(calls: list, delay: float = 0.0):
    """A judge reply that depends only on the request: answer 1 scores len(its text), answer 2 scores 3."""
    def complete(messages):
        calls.append(messages)
        time.sleep(delay)
        first = messages[1]["content"].split("[Answer 1]\n")[1].split("\n\n")[0]
        return f"Scores: {len(first) + (len(calls) % 2 if delay == 0 else 0)} 3"
    return complete


def test_every_request_and_reply_is_saved_and_a_rerun_reuses_them(tmp_path):
    log = tmp_path / "judge.jsonl"
    calls: list = []
    judge = Judge(_settings(), complete=scripted(calls))
    judge.record_to(log)
    first = judge.compare("base", "fedit", QUESTIONS, A, B).record()
    assert len(calls) == 3 * 2 * 2                                  # questions x orders x repeats
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 12 and lines[0]["messages"] == calls[0] and lines[0]["model"] == "judge-test"
    assert [line["reply"] for line in lines[:2]] == ["Scores: 3 3", "Scores: 2 3"]
    assert {line["n"] for line in lines} == {0, 1}                  # each request twice (--judge-repeats 2)
    with open(log, "a") as handle:
        handle.write('{"key": "cut short by a crash')            # a crash in the middle of a line
    again = Judge(_settings(), complete=lambda m: pytest.fail("a stored reply was asked again"))
    assert again.record_to(log).reused == 0
    assert again.compare("base", "fedit", QUESTIONS, A, B).record() == first
    assert again.complete.reused == 12
    more = Judge(_settings(repeats=3), complete=scripted(calls := []))   # a third repeat: only that is new
    more.record_to(log)
    more.compare("base", "fedit", QUESTIONS, A, B)
    assert len(calls) == 6 and len(log.read_text().splitlines()) == 12 + 1 + 6   # + the damaged line


def test_concurrency_sends_requests_at_once_and_gives_the_same_scores():
    busy, peak, lock = [0], [0], threading.Lock()

    def complete(messages):
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        time.sleep(0.05)
        with lock:
            busy[0] -= 1
        first = messages[1]["content"].split("[Answer 1]\n")[1].split("\n\n")[0]
        return f"Scores: {len(first)} 3"

    one = Judge(_settings(), complete=complete).compare("base", "fedit", QUESTIONS, A, B).record()
    assert peak[0] == 1
    four = Judge(_settings(concurrency=4), complete=complete).compare("base", "fedit", QUESTIONS, A, B).record()
    assert peak[0] == 4 and four == one
    assert one["total_a"] == pytest.approx(3 * (2 + 3) / 2)          # a scored 2 when first, 3 when second


def test_concurrency_must_be_positive():
    with pytest.raises(Exception, match=r"^--judge-concurrency: must be at least 1, got 0$"):
        _settings(concurrency=0)


def test_an_html_page_is_named_as_such():
    page = "<!DOCTYPE html>\n<html><head><title>Sign in - Corp SSO</title></head><body>...</body></html>"
    with ScriptedJudgeServer([(200, page, {"Content-Type": "text/html; charset=utf-8"})]) as server:
        judge = Judge(_settings(server.url), sleep=lambda s: pytest.fail("an HTML page must not be retried"))
        with pytest.raises(JudgeError) as err:
            judge.verdict("q", "a", "b")
    assert str(err.value) == (f"--judge-url: the judge endpoint {server.url}/chat/completions answered with an "
                              "HTML page, not JSON (title 'Sign in - Corp SSO'); --judge-url must be the API's "
                              "base URL, e.g. https://api.openai.com/v1")


def test_check_names_a_model_the_endpoint_does_not_serve():
    with ScriptedJudgeServer([], models=["gpt-4o", "judge-test"]) as server:
        ChatClient(_settings(server.url)).check()
        with pytest.raises(JudgeError) as err:
            ChatClient(_settings(server.url, model="gpt-40")).check()
    assert str(err.value) == (f"--judge-model: gpt-40 is not a model of the judge endpoint {server.url}/models "
                              "(it serves gpt-4o, judge-test)")
    assert server.gets == ["/v1/models", "/v1/models"] and server.requests == []   # no chat request paid for


def test_check_an_unreachable_endpoint_and_one_without_a_model_list():
    with ScriptedJudgeServer([]) as server:                  # GET /models: 404, only reachability is known
        ChatClient(_settings(server.url)).check()
    with pytest.raises(JudgeError, match=r"^--judge-url: cannot reach the judge endpoint http://127\.0\.0\.1:9/v1/"
                                         r"models \(Connection error\.\)$"):
        ChatClient(_settings("http://127.0.0.1:9/v1")).check()
