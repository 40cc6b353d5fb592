"""`fedit experiment` end to end through the CLI on tiny-random and the tiny fixture files:
all four system kinds, the report files, valid PNGs, the judge against a local test double,
resumability and one-line errors."""

from __future__ import annotations

import json
import re
import shutil
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


def test_every_system_is_its_own_tracker_run(experiment):
    """Issue 19.7: --logger (here auto: TensorBoard) tracks every system, not only fedit: its figures as
    system/*, the config and system as hparams, and a baseline's step losses (a local one's per client)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    results = json.loads((experiment / "results.json").read_text())
    for name in ("base", "local-1", "local-2", "centralized", "fedit"):
        acc = EventAccumulator(str(experiment / "systems" / name / "tensorboard" / "system"))
        acc.Reload()
        loss = [e.value for e in acc.Scalars("system/loss")]
        assert loss == [pytest.approx(results["systems"][name]["overall"]["loss"], rel=1e-6)]
        start = plugin_data_pb2.HParamsPluginData.FromString(
            acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
        assert start.hparams["system"].string_value == name and start.hparams["model"].string_value == "tiny-random"
    client = results["local_clients"]["local-1"]
    steps = EventAccumulator(str(experiment / "systems" / "local-1" / "tensorboard" / "steps"))
    steps.Reload()
    curve = json.loads((experiment / "systems" / "local-1" / "train.json").read_text())["loss_curve"]
    assert [e.value for e in steps.Scalars(f"clients/{client}/loss")] == pytest.approx(curve)
    assert [e.step for e in steps.Scalars("train/loss")] == list(range(1, len(curve) + 1)) and len(curve) == 6


def test_judge_requests_and_replies_are_saved(experiment, judge_server):
    """Issue 19.8: judge.jsonl holds every request the judge sent and the reply it got."""
    lines = [json.loads(line) for line in (experiment / "judge.jsonl").read_text().splitlines()]
    sent = [r["body"] for r in judge_server.requests][:len(lines)]
    assert [line["messages"] for line in lines] == [body["messages"] for body in sent]
    assert {line["reply"] for line in lines} == {"Scores: 7 4"}
    assert len(lines) >= 4 * 2 * 2    # 4 systems x 2 questions x 2 orders (later tests of this module add theirs)


def test_a_wrong_judge_model_stops_before_training(tmp_path, monkeypatch, capsys):
    """Issue 19.8: the endpoint was first contacted after every system had trained."""
    from fedit.experiment import runner

    monkeypatch.setattr(runner, "build_workbench", lambda cfg: pytest.fail("trained before the judge was checked"))
    out = tmp_path / "exp"
    with ScriptedJudgeServer([], models=["gpt-4o"]) as server:
        assert main(_args(out, "--judge-url", server.url, "--judge-model", "gpt-40")) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"fedit experiment: error: --judge-model: gpt-40 is not a model of the judge endpoint {server.url}/models "
        "(it serves gpt-4o)")
    assert not out.exists()


def test_a_bad_reference_file_stops_before_training(tmp_path, monkeypatch, capsys):
    """A --judge-reference without an answer for a question was found only after every system had trained."""
    from fedit.experiment import runner

    monkeypatch.setattr(runner, "build_workbench", lambda cfg: pytest.fail("trained before the reference was read"))
    questions, answers = _questions(tmp_path)
    answers.write_text('{"question_id": 1, "text": "x"}\n')
    out = tmp_path / "exp"
    with ScriptedJudgeServer([], models=["m"]) as server:
        assert main(_args(out, "--judge-url", server.url, "--judge-model", "m", "--judge-questions",
                          str(questions), "--judge-reference", str(answers))) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--judge-reference: {answers} has no answer for question_id 2")
    assert not out.exists()


def _copy(experiment: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(experiment, out)
    return out


def test_rerun_of_one_system_with_other_settings_keeps_the_others(experiment, tmp_path):
    # issue 7, item 18: --systems base with another --gen-records used to drop every other system
    out = _copy(experiment, tmp_path)
    assert main(_args(out, "--systems", "base", "--gen-records", "4")) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["systems"]) == ["base", "local-1", "local-2", "centralized", "fedit"]
    assert results["systems"]["base"]["overall"]["generated"] == 4
    assert set(results["stale"]) == {"local-1", "local-2", "centralized", "fedit"}
    assert results["stale"]["fedit"]["gen_records"] == 6
    md = (out / "report.md").read_text()
    assert "Evaluated with other settings than this run's" in md and "**fedit** (gen_records 6," in md
    row = next(line for line in md.splitlines() if line.startswith("| base |") and "FedIT" in line)
    assert "not compared: generated with other settings" in row          # ROUGE-L is not compared ...
    assert re.search(r"\| base \| [+-]\d\.\d{4} \[", row)                # ... held-out loss still is


def _questions(tmp_path: Path) -> tuple[Path, Path]:
    questions, answers = tmp_path / "question.jsonl", tmp_path / "answer_ref.jsonl"
    questions.write_text('{"question_id": 1, "text": "How can I sleep better?", "category": "generic"}\n'
                         '{"question_id": 2, "text": "What is 17 * 3?", "category": "math"}\n')
    answers.write_text('{"question_id": 2, "model_id": "ref-model", "text": "51"}\n'
                       '{"question_id": 1, "model_id": "ref-model", "text": "Keep a regular schedule."}\n')
    return questions, answers


def test_fig3_every_system_against_reference_answers_with_the_vicuna_prompt(experiment, tmp_path):
    from fedit.experiment.prompts import VICUNA_SYSTEM

    out = _copy(experiment, tmp_path)
    questions, answers = _questions(tmp_path)
    with ScriptedJudgeServer([(200, "8 6\nAssistant 1 is clearer.")] * 100) as server:
        assert main(_args(out, "--systems", "fedit", "--judge-url", server.url, "--judge-model", "m",
                          "--judge-repeats", "1", "--judge-prompt", "vicuna", "--judge-questions", str(questions),
                          "--judge-reference", str(answers))) == 0
    judge = json.loads((out / "results.json").read_text())["judge"]
    assert judge["mode"] == "reference" and judge["reference_label"] == "ref-model"
    assert set(judge["pairs"]) == {"base", "local-1", "local-2", "centralized", "fedit"}
    pair = judge["pairs"]["fedit"]
    assert (pair["a"], pair["b"], pair["verdicts"], pair["relative"]) == ("fedit", "reference", 4, 1.0)
    assert all(r["body"]["messages"][0]["content"] == VICUNA_SYSTEM for r in server.requests)
    shown = [server.first_answer(i) for i in range(2)]
    assert "Keep a regular schedule." in shown                  # the reference answer of question_id 1
    md = (out / "report.md").read_text()
    assert "with the **vicuna** prompt" in md and "reference answers of ref-model" in md
    assert "Relative score against the reference answers (paper Fig. 3)" in md
    assert (out / "relative_scores.png").is_file()


def test_reference_answers_must_match_the_questions(experiment, tmp_path, capsys):
    questions, answers = _questions(tmp_path)
    answers.write_text('{"question_id": 1, "text": "x"}\n')
    with ScriptedJudgeServer([]) as server:   # reachable (the endpoint is checked first), never asked to judge
        assert main(_args(experiment, "--systems", "fedit", "--judge-url", server.url, "--judge-model",
                          "m", "--judge-questions", str(questions), "--judge-reference", str(answers))) == 2
    assert server.requests == []
    assert capsys.readouterr().err.strip().endswith(f"--judge-reference: {answers} has no answer for question_id 2")
    assert main(_args(experiment, "--judge-url", "http://x/v1", "--judge-model", "m", "--judge-reference",
                      str(answers))) == 2
    assert "--judge-reference: reference answers are matched by question_id" in capsys.readouterr().err


def test_judge_http_400_stops_with_the_servers_message(experiment, tmp_path, capsys):
    # issue 7, item 17: a 400 used to be retried as a network blip, then the run exited 0
    out = _copy(experiment, tmp_path)
    with ScriptedJudgeServer([(400, "Unsupported value: 'temperature' does not support 0.7 with this model.")] * 50
                             ) as server:
        rc = main(_args(out, "--systems", "fedit", "--judge-url", server.url, "--judge-model", "m",
                        "--judge-repeats", "1", "--judge-max-questions", "2", "--judge-retries", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and len(server.requests) == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(
        f"--judge-temperature: the judge endpoint {server.url}/chat/completions answered HTTP 400: "
        "Unsupported value: 'temperature' does not support 0.7 with this model.")
    assert (out / "report.md").is_file() and not (out / "relative_scores.png").exists()


def test_a_judge_that_produced_nothing_draws_no_chart_and_fails(experiment, tmp_path, capsys):
    out = _copy(experiment, tmp_path)
    with ScriptedJudgeServer([(200, "I cannot judge this.")] * 200) as server:
        rc = main(_args(out, "--systems", "fedit", "--judge-url", server.url, "--judge-model", "m",
                        "--judge-repeats", "1", "--judge-max-questions", "2", "--judge-retries", "1"))
    err = capsys.readouterr().err
    judge = json.loads((out / "results.json").read_text())["judge"]
    assert all(p["verdicts"] == 0 for p in judge["pairs"].values())
    failed = 2 * 2 * len(judge["pairs"])              # 2 questions x 2 orders, each asked twice (--judge-retries 1)
    assert len(server.requests) == 2 * failed
    assert rc == 2 and "Traceback" not in err
    assert f"--judge-url: the judge produced no valid verdict ({failed} unparsable verdicts failed); no " \
           "relative-score chart was drawn" in err.strip().splitlines()[-1]
    assert not (out / "relative_scores.png").exists()


def test_seeds_repeat_trained_systems_and_are_reused(tmp_path):
    out = tmp_path / "seeds"
    args = _args(out, "--seeds", "2", "--local-baselines", "1", "--systems", "base,local,fedit", "--rounds", "1",
                 "--local-steps", "2", "--gen-records", "2", "--max-new-tokens", "3")
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["seeds"] == [42, 43]
    assert {n: sorted(r) for n, r in results["runs"].items()} == {"base": ["42"], "local-1": ["42", "43"],
                                                                  "fedit": ["42", "43"]}
    assert not (out / "systems" / "seed-43" / "base").exists()
    cfg = (out / "systems" / "seed-43" / "fedit" / "config.yaml").read_text()
    assert "seed: 43" in cfg and "data_seed: 42" in cfg
    fedit = results["summary"]["fedit"]["overall"]["loss"]
    assert fedit["n"] == 2 and fedit["sd"] is not None
    assert [results["runs"]["fedit"][s]["overall"]["loss"] for s in ("42", "43")] != [fedit["mean"]] * 2
    md = (out / "report.md").read_text()
    assert "mean ± sd over 2 seeds" in md and "Seeds: 42, 43 (training seeds; one data split)." in md
    assert "## Training loss of every system (mean ± sd over 2 seeds)" in md and (out / "training_loss.svg").is_file()
    assert "## Global held-out loss per round (mean ± sd over 2 seeds)" in md   # issue 19.9: seed bands
    assert results["comparisons"]["local-1"]["loss"]["seeds"] == 2
    before = {p: p.stat().st_mtime_ns for p in out.glob("systems/**/result.json")}
    assert len(before) == 5
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("systems/**/result.json")} == before


def test_a_result_without_per_record_figures_is_reevaluated_not_retrained(experiment, tmp_path):
    # a result.json written before per-record figures existed: reused in the report until rerun
    out = _copy(experiment, tmp_path)
    path = out / "systems" / "local-2" / "result.json"
    old = json.loads(path.read_text())
    del old["records"]
    path.write_text(json.dumps(old))
    trained = (out / "systems" / "local-2" / "train.json").stat().st_mtime_ns
    assert main(_args(out, "--systems", "base")) == 0
    comps = json.loads((out / "results.json").read_text())["comparisons"]
    assert comps["local-2"]["loss"] == {"skipped": "no per-record figures (a result.json from an older fedit: "
                                                   "rerun it with --systems NAME)"}
    assert main(_args(out, "--systems", "local-2")) == 0
    assert "records" in json.loads(path.read_text())
    assert "estimate" in json.loads((out / "results.json").read_text())["comparisons"]["local-2"]["loss"]
    assert (out / "systems" / "local-2" / "train.json").stat().st_mtime_ns == trained
