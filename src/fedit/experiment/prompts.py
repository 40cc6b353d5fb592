"""The judge's prompts: fedit's own one-line reviewer prompt, and the reviewer prompts of the
original Vicuna evaluation (FastChat), which the FedIT paper's GPT-4 scores follow.

``--judge-prompt vicuna`` reproduces FastChat's ``fastchat/eval/table/prompt.jsonl`` (commit
080a703c7e77215a9a7530d421acedb05fe7ed23, Apache-2.0, lm-sys/FastChat; deleted upstream with the
old eval package in June 2023) word for word: one system prompt, one template, and a
category-specific instruction chosen as ``fastchat/eval/table/reviewer.jsonl`` does (``coding``
and ``math`` questions get their own, every other category the general one). Its replies are
parsed as ``fastchat/eval/eval_gpt_review.py``'s ``parse_score`` does: the first line holds the two
scores (commas allowed); the math prompt asks for a Python tuple at the end, which is read too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

FEDIT_SYSTEM = (
    "You are a careful, impartial reviewer of answers written by AI assistants. You will see a "
    "user's question and two answers, labelled Answer 1 and Answer 2. Judge how helpful, correct, "
    "relevant and complete each answer is for the question; do not reward length for its own sake "
    "and ignore the order in which the answers are shown. Give each answer an integer score from 1 "
    "(useless) to 10 (excellent). Reply with one line and nothing else, in exactly this form:\n"
    "Scores: <score of Answer 1> <score of Answer 2>"
)
FEDIT_USER = "[Question]\n{question}\n\n[Answer 1]\n{answer_1}\n\n[Answer 2]\n{answer_2}"

# --- FastChat's original Vicuna reviewer prompts (prompt.jsonl, prompt_id 1, 2, 3) ----------------
VICUNA_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
VICUNA_USER = ("[Question]\n{question}\n\n[The Start of Assistant 1's Answer]\n{answer_1}\n\n"
               "[The End of Assistant 1's Answer]\n\n[The Start of Assistant 2's Answer]\n{answer_2}\n\n"
               "[The End of Assistant 2's Answer]\n\n[System]\n{prompt}\n\n")
VICUNA_GENERAL = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above.\nPlease rate the helpfulness, relevance, accuracy, level of details of "
    "their responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score "
    "indicates better overall performance.\nPlease first output a single line containing only two values "
    "indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space. In "
    "the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
    "potential bias and ensuring that the order in which the responses were presented does not affect your "
    "judgment.")
VICUNA_CODING = (
    "Your task is to evaluate the coding abilities of the above two assistants. They have been asked to "
    "implement a program to solve a given problem. Please review their code submissions, paying close "
    "attention to their problem-solving approach, code structure, readability, and the inclusion of helpful "
    "comments.\n\nPlease ensure that the assistants' submissions:\n\n1. Correctly implement the given problem "
    "statement.\n2. Contain accurate and efficient code.\n3. Include clear and concise comments that explain "
    "the code's logic and functionality.\n4. Adhere to proper coding standards and best practices.\n\nOnce "
    "you have carefully reviewed both submissions, provide detailed feedback on their strengths and "
    "weaknesses, along with any suggestions for improvement. You should first output a single line "
    "containing two scores on the scale of 1-10 (1: no code/no sense; 10: perfect) for Assistant 1 and 2, "
    "respectively. Then give extra comments starting from the next line.")
VICUNA_MATH = (
    "We would like to request your feedback on the mathematical proficiency of two AI assistants regarding "
    "the given user question displayed above.\nFirst, please solve the problem independently, without "
    "referring to the answers provided by Assistant 1 and Assistant 2.\nAfterward, please examine the "
    "problem-solving process of Assistant 1 and Assistant 2 step-by-step to ensure their correctness, "
    "identifying any incorrect steps if present. Your evaluation should take into account not only the "
    "answer but also the problem-solving steps.\nFinally, please output a Python tuple containing two "
    "numerical scores for Assistant 1 and Assistant 2, ranging from 1 to 10, respectively. If applicable, "
    "explain the reasons for any variations in their scores and determine which assistant performed better.")
VICUNA_BY_CATEGORY = {"coding": VICUNA_CODING, "math": VICUNA_MATH}

_FEDIT_SCORES = re.compile(r"scores?\s*:\s*(\d+(?:\.\d+)?)\s*(?:,|/|;|and|\s)\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
_TUPLE = re.compile(r"\(\s*(\d+(?:\.\d+)?)\s*,\s*(\d+(?:\.\d+)?)\s*\)")


class Unparsable(Exception):
    """A judge reply without two scores in 1..10."""


def _in_range(a: float, b: float, reply: str) -> tuple[float, float]:
    if not (1 <= a <= 10 and 1 <= b <= 10):
        raise Unparsable(reply[:200])
    return a, b


def parse_fedit(reply: str) -> tuple[float, float]:
    """``Scores: A B`` anywhere in the reply."""
    match = _FEDIT_SCORES.search(reply)
    if not match:
        raise Unparsable(reply[:200])
    return _in_range(float(match.group(1)), float(match.group(2)), reply)


def parse_vicuna(reply: str) -> tuple[float, float]:
    """FastChat's parse_score: the first line, commas as spaces, exactly two numbers; else the last
    ``(A, B)`` tuple (the math prompt's format)."""
    first = reply.strip().split("\n")[0].replace(",", " ").split()
    try:
        if len(first) == 2:
            return _in_range(float(first[0]), float(first[1]), reply)
    except ValueError:
        pass
    tuples = _TUPLE.findall(reply)
    if tuples:
        return _in_range(float(tuples[-1][0]), float(tuples[-1][1]), reply)
    raise Unparsable(reply[:200])


@dataclass(frozen=True)
class JudgePrompt:
    name: str
    description: str
    build: Callable[[str, str, str, str], list[dict[str, str]]]   # (question, category, first, second)
    parse: Callable[[str], tuple[float, float]]


def _fedit_messages(question: str, category: str, first: str, second: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": FEDIT_SYSTEM},
            {"role": "user", "content": FEDIT_USER.format(question=question, answer_1=first, answer_2=second)}]


def _vicuna_messages(question: str, category: str, first: str, second: str) -> list[dict[str, str]]:
    prompt = VICUNA_BY_CATEGORY.get(category, VICUNA_GENERAL)
    return [{"role": "system", "content": VICUNA_SYSTEM},
            {"role": "user", "content": VICUNA_USER.format(question=question, answer_1=first, answer_2=second,
                                                           prompt=prompt)}]


PROMPTS = {
    "fedit": JudgePrompt("fedit", "fedit's reviewer prompt, one reply line 'Scores: A B', 1-10",
                         _fedit_messages, parse_fedit),
    "vicuna": JudgePrompt("vicuna", "FastChat's reviewer prompts of the original Vicuna evaluation, "
                          "general/coding/math by category, 1-10, fastchat/eval/table/prompt.jsonl",
                          _vicuna_messages, parse_vicuna),
}
