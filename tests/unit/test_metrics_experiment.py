"""Text metrics of fedit experiment against hand-computed values."""

import pytest

from fedit.experiment.metrics import (contains_match, exact_match, normalize_answer, rouge_l, score_answers,
                                      summarize_scores)


def test_rouge_l_hand_computed():
    # LCS of [the cat sat on the mat] and [the cat is on the mat] = "the cat on the mat" (5 of 6 each)
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # [a mammal] vs [mammal]: P = 1/2, R = 1, F = 2PR/(P+R) = 2/3; case and punctuation ignored
    assert rouge_l("A Mammal.", "mammal") == pytest.approx(2 / 3)
    assert rouge_l("", "mammal") == 0.0
    assert rouge_l("fish", "mammal") == 0.0


def test_normalize_and_exact_match():
    assert normalize_answer("The  Whale, is a MAMMAL!") == "whale is mammal"
    assert exact_match("Mammal.", "mammal") == 1.0
    assert exact_match("a mammal", "Mammal") == 1.0        # articles dropped
    assert exact_match("It is a mammal.", "mammal") == 0.0
    assert contains_match("It is a mammal.", "Mammal") == 1.0
    assert contains_match("mammals", "mammal") == 0.0      # whole words only
    assert contains_match("anything", "") == 0.0


def test_scores_per_category_and_overall():
    rows = score_answers(["mammal", "It is a fish", "the cat sat on the mat"],
                         ["Mammal", "bird", "the cat is on the mat"],
                         ["classification", "classification", "open_qa"], ["classification"])
    assert "exact_match" not in rows[2]
    summary = summarize_scores(rows)
    cls = summary["per_category"]["classification"]
    assert cls["exact_match"] == pytest.approx(0.5)
    assert cls["contains_match"] == pytest.approx(0.5)
    assert cls["rouge_l"] == pytest.approx(0.5)             # 1.0 and 0.0
    assert summary["per_category"]["open_qa"]["rouge_l"] == pytest.approx(5 / 6)
    assert summary["overall"]["rouge_l"] == pytest.approx((1 + 0 + 5 / 6) / 3)
    assert summary["overall"]["exact_match"] == pytest.approx(0.5)   # over label-like records only
    assert summary["overall"]["generated"] == 3


def test_local_clients_have_different_mixes():
    from fedit.data import Example
    from fedit.experiment.systems import choose_local_clients

    def client(cats):
        return [Example(f"q{i}", "", "a", c) for i, c in enumerate(cats)]
    clients = [client(["a"] * 5), client(["a"] * 9 + ["b"]), client(["b"] * 4), client(["a", "b"] * 3)]
    # largest first (1: mostly a), then the farthest from it (2: all b), then the mixed one (3)
    assert choose_local_clients(clients, 3) == [1, 2, 3]
    assert choose_local_clients(clients, 2) == [1, 2]            # a prefix: more baselines extend it
    assert choose_local_clients(clients, 0) == []


def test_vicuna_and_mt_bench_questions(tmp_path):
    from fedit.experiment.judging import load_questions

    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "How can I sleep better?", "category": "generic"}\n'
                    '{"question_id": 2, "category": "writing", "turns": ["Write a haiku.", "Shorter."]}\n')
    qs = load_questions(str(path))
    assert [q["instruction"] for q in qs] == ["How can I sleep better?", "Write a haiku."]
    assert [q["category"] for q in qs] == ["generic", "writing"]
