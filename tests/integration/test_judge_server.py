"""The judge against a real OpenAI-compatible server that nobody here wrote: ``transformers serve``
(transformers' own server, the `serve` extra) serving the tiny-random model from the test cache,
offline. Verdicts of a random model are meaningless; these tests check the protocol, the counting
of unparsable verdicts, a fatal HTTP 400 with the server's own message, the reference (Fig. 3)
path of ``fedit experiment``, and that nothing crashes.

The server is started once per module on a free port with HF_HUB_OFFLINE=1, waited for through
its ``/health`` endpoint (bounded: ``START_TIMEOUT_S``; a start that loses the port race is retried)
and stopped by its process group id.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="needs transformers[serving]")
pytest.importorskip("uvicorn", reason="needs transformers[serving]")

from served import start_server as _start, stop_server as _stop  # tests/served.py

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture(scope="module")
def served(tmp_path_factory, fedit_cache):
    from fedit.model import resolve_model

    model = resolve_model("tiny-random")
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    proc, url = _start(model, log)
    try:
        yield url, str(model)
    finally:
        _stop(proc)
    assert proc.poll() is not None


def _settings(url: str, model: str, **kw):
    from fedit.experiment.settings import JudgeSettings

    return JudgeSettings(**{"url": url, "model": model, "key_env": "FEDIT_TEST_NO_KEY", "repeats": 1, "retries": 1,
                            "max_tokens": 8, **kw})


@pytest.mark.parametrize("prompt", ["fedit", "vicuna"])
def test_verdicts_of_a_served_model_are_counted(served, prompt):
    from fedit.experiment.judge import Judge

    url, model = served
    judge = Judge(_settings(url, model, prompt=prompt), sleep=lambda s: pytest.fail("no transport retry expected"))
    out = judge.compare("base", "reference", ["How can I sleep better?", "What is 17 * 3?"],
                        ["Go to bed early.", "51"], ["Keep a schedule.", "It is 51."], categories=["generic", "math"])
    assert out.questions == 2
    assert set(out.failures) <= {"unparsable"}                   # every request was answered
    assert out.verdicts + out.failures["unparsable"] == 2 * 2    # 2 questions x 2 orders, each counted once
    assert out.unscored_questions == sum(1 for q in out.per_question if q["verdicts"] == 0)


def test_a_400_from_the_server_is_fatal_with_its_message(served):
    from fedit.errors import ConfigError
    from fedit.experiment.judge import Judge

    url, model = served
    judge = Judge(_settings(url, "not-the-served-model"), sleep=lambda s: pytest.fail("a 400 must not be retried"))
    with pytest.raises(ConfigError) as err:
        judge.verdict("q", "a", "b")
    assert str(err.value) == (f"--judge-model: the judge endpoint {url}/chat/completions answered HTTP 400: "
                              f"Server is pinned to '{model}'; requested 'not-the-served-model'.")


def test_experiment_judges_against_reference_answers_on_the_served_model(served, tmp_path, capsys):
    from fedit.cli import main

    url, model = served
    questions, answers = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    questions.write_text('{"question_id": 1, "text": "Name a fruit.", "category": "generic"}\n'
                         '{"question_id": 2, "text": "What is 2 + 2?", "category": "math"}\n')
    answers.write_text('{"question_id": 1, "model_id": "ref", "text": "An apple."}\n'
                       '{"question_id": 2, "model_id": "ref", "text": "4"}\n')
    out = tmp_path / "exp"
    rc = main(["-q", "experiment", "--model", "tiny-random", "--data", str(FIXTURES / "tiny"), "--test-data",
               str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--rounds", "1", "--clients-per-round", "2",
               "--local-baselines", "0", "--systems", "base", "--gen-records", "2", "--max-new-tokens", "4",
               "--out", str(out), "--judge-url", url, "--judge-model", model, "--judge-prompt", "vicuna",
               "--judge-questions", str(questions), "--judge-reference", str(answers), "--judge-repeats", "1",
               "--judge-retries", "1", "--judge-max-tokens", "8"])
    err = capsys.readouterr().err
    pair = json.loads((out / "results.json").read_text())["judge"]["pairs"]["base"]
    assert (pair["a"], pair["b"], pair["questions"]) == ("base", "reference", 2)
    assert set(pair["failures"]) <= {"unparsable"}
    assert pair["verdicts"] + pair["failures"].get("unparsable", 0) == 4
    if pair["verdicts"] == 0:      # what a random model does: told, no chart, non-zero exit
        assert rc == 2 and "the judge produced no valid verdict (4 unparsable verdicts failed)" in err
        assert not (out / "relative_scores.png").exists()
    else:
        assert rc == 0 and (out / "relative_scores.png").is_file()
    assert "Traceback" not in err
