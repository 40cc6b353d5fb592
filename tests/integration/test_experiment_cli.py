"""`fedit experiment` end to end through the CLI on tiny-random and the tiny fixture files:
all four system kinds, the report files, valid PNGs, the judge against a local test double,
resumability and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from judge_double import ScriptedJudgeServer  # tests/judge_double.py
from PIL import Image

from fedit.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _args(out: Path, *extra: str) -> list[str]:
    return ["-q", "experiment", "--model", "tiny-random", "--data", str(FIXTURES / "tiny"),
            "--test-data", str(FIXTURES / "tiny_test.jsonl"), "--partition", "files", "--rounds", "2",
            "--clients-per-round", "2", "--local-steps", "3", "--batch-size", "4", "--micro-batch-size", "2",
            "--local-baselines", "2", "--gen-records", "6", "--max-new-tokens", "6", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def judge_server():
    # every verdict "Scores: 7 4": the first-shown answer always wins, so both orders average to 5.5
    with ScriptedJudgeServer([(200, "Scores: 7 4")] * 1000) as server:
        yield server


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, judge_server):
    out = tmp_path_factory.mktemp("exp") / "run"
    rc = main(_args(out, "--judge-url", judge_server.url, "--judge-model", "judge-test",
                    "--judge-repeats", "1", "--judge-max-questions", "2"))
    assert rc == 0
    return out


def test_every_system_is_trained_evaluated_and_reported(experiment):
    results = json.loads((experiment / "results.json").read_text())
    systems = results["systems"]
    assert list(systems) == ["base", "local-1", "local-2", "centralized", "fedit"]
    losses = {n: s["overall"]["loss"] for n, s in systems.items()}
    assert len({round(v, 6) for v in losses.values()}) >= 3, losses      # distinct systems, distinct figures
    assert losses["centralized"] < losses["base"] and losses["fedit"] < losses["base"]
    for s in systems.values():
        assert set(s["per_category"]) == {"classification", "closed_qa", "open_qa", "summarization"}
        assert s["overall"]["generated"] == 6 and "rouge_l" in s["overall"]
        assert "exact_match" in s["per_category"]["classification"]
    steps = {x["name"]: x["steps"] for x in results["settings"]["systems"]}
    assert steps["centralized"] == steps["fedit"] == 2 * 2 * 3 and steps["local-1"] == 2 * 3
    assert results["settings"]["generation"]["max_new_tokens"] == 6
    assert results["local_clients"]["local-1"] != results["local_clients"]["local-2"]


def test_report_files_and_pngs(experiment):
    md = (experiment / "report.md").read_text()
    html = (experiment / "report.html").read_text()
    for name in ("base", "local-1", "centralized", "fedit", "Budget rule"):
        assert name in md and name in html
    assert "data:image/png;base64," in html and "<img" in html
    for png in ("categories.png", "loss_per_round.png"):
        with Image.open(experiment / png) as img:
            img.verify()
            assert img.format == "PNG"


def test_judge_relative_scores(experiment, judge_server):
    judge = json.loads((experiment / "results.json").read_text())["judge"]
    assert set(judge["pairs"]) == {"base", "local-1", "local-2", "centralized"}
    pair = judge["pairs"]["base"]
    assert pair["verdicts"] == 2 * 2 and pair["questions"] == 2      # 2 questions x 2 orders x 1 repeat
    assert pair["total_a"] == pytest.approx(2 * 5.5) and pair["relative"] == pytest.approx(1.0)
    assert (experiment / "relative_scores.png").is_file()


def test_rerun_reuses_finished_systems(experiment, caplog):
    before = {p: p.stat().st_mtime_ns for p in experiment.glob("systems/*/result.json")}
    assert main(_args(experiment, "--systems", "base,fedit")) == 0
    assert {p: p.stat().st_mtime_ns for p in experiment.glob("systems/*/result.json")} == before
    results = json.loads((experiment / "results.json").read_text())
    assert len(results["systems"]) == 5                       # earlier systems stay in the report


def test_changed_evaluation_reevaluates_without_retraining(experiment):
    adapter = experiment / "systems" / "local-1" / "train.json"
    trained = adapter.stat().st_mtime_ns
    assert main(_args(experiment, "--systems", "local-1", "--max-new-tokens", "4")) == 0
    result = json.loads((experiment / "systems" / "local-1" / "result.json").read_text())
    assert result["eval_settings"]["max_new_tokens"] == 4
    assert adapter.stat().st_mtime_ns == trained


def test_user_mistakes_are_one_line_errors(experiment, tmp_path, capsys):
    assert main(_args(experiment, "--rounds", "3")) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(_args(tmp_path / "x", "--systems", "base,bogus")) == 2
    err = capsys.readouterr().err
    assert "--systems" in err and err.count("\n") == 1


def test_judge_on_a_vicuna_style_question_file(experiment, judge_server, tmp_path):
    questions = tmp_path / "question.jsonl"
    questions.write_text('{"question_id": 1, "text": "How can I sleep better?", "category": "generic"}\n'
                         '{"question_id": 2, "category": "writing", "turns": ["Write a haiku."]}\n')
    assert main(_args(experiment, "--systems", "fedit", "--judge-url", judge_server.url, "--judge-model", "m",
                      "--judge-repeats", "1", "--judge-questions", str(questions))) == 0
    judge = json.loads((experiment / "results.json").read_text())["judge"]
    assert judge["question_source"] == str(questions) and judge["questions"] == 2
    assert all(p["verdicts"] == 4 for p in judge["pairs"].values())
    answers = json.loads((experiment / "systems" / "base" / "judge_answers.json").read_text())["answers"]
    assert len(answers) == 2


def test_adapters_carry_tokenizer_and_card_and_results_their_provenance(experiment):
    """issue 7: every adapter loads with its tokenizer; results.json says what made it."""
    from transformers import AutoTokenizer

    for name in ("local-1", "centralized"):
        folder = experiment / "systems" / name / "adapter"
        assert AutoTokenizer.from_pretrained(folder).chat_template
        assert f"System {name} of a fedit experiment" in (folder / "README.md").read_text()
    assert AutoTokenizer.from_pretrained(experiment / "systems" / "fedit" / "final").chat_template
    prov = json.loads((experiment / "results.json").read_text())["provenance"]
    assert prov["fedit"] and "torch" in prov["libraries"] and prov["model"]["name"] == "tiny-random"
