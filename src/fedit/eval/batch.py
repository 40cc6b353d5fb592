"""``fedit generate``: one instruction (plain answer), or every prompt of a file or stdin (JSON lines).

Prompt files: in a ``.jsonl`` file every line is a JSON object; elsewhere (a text file, stdin) a
line that is a JSON object is a record and any other non-empty line is an instruction. Records:
``instruction`` (with ``context`` or ``input``), ``prompt``, or ``messages`` (role/content turns
ending with a user turn: the next assistant turn is generated). Each answer is printed as the
record's prompt fields plus ``response`` (and ``reference``: a ``response``/``output`` the record
already had, e.g. a test file's), one JSON line per prompt, in input order.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from fedit.config import SamplingConfig
from fedit.data.prompts import conversation_prompt
from fedit.errors import DataError
from fedit.eval.sampling import generate_texts, instruction_prompt, with_system

ROLES = ("system", "user", "assistant")


def _lines(spec: str) -> tuple[str, Iterable[str]]:
    if spec == "-":
        return "<stdin>", sys.stdin
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(f"--prompts: {spec}: no such file")
    try:
        return str(path), path.read_text(encoding="utf-8-sig").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--prompts: {spec}: cannot read ({exc})".splitlines()[0]) from None


def read_prompts(spec: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for every prompt of a file (``-``: stdin); see the module docstring."""
    name, lines = _lines(spec)
    jsonl = name.endswith(".jsonl")
    for lineno, line in enumerate(lines, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        where = f"{name}: line {lineno}"
        if jsonl or text.lstrip().startswith("{"):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                if jsonl:
                    raise DataError(f"{where}, column {exc.colno}: invalid JSON ({exc.msg})") from None
                record = {"instruction": text}
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record
        else:
            yield where, {"instruction": text}


def _string(record: dict[str, Any], key: str, where: str) -> str:
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _turns(record: dict[str, Any], where: str) -> list[tuple[str, str]]:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty array of turns")
    turns = []
    for i, turn in enumerate(messages):
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise DataError(f"{where}: messages[{i}] must be an object with a role ({', '.join(ROLES)}) "
                            "and a string content")
        turns.append((turn["role"], turn["content"]))
    if turns[-1][0] != "user":
        raise DataError(f"{where}: the last turn of 'messages' must be from the user (its answer is generated)")
    return turns


@dataclass
class Prompt:
    """One validated prompt: a conversation, or an instruction with its context."""

    echo: dict[str, Any]                       # the prompt fields repeated in the output line
    reference: Any = None                      # a response/output the record already had
    turns: list[tuple[str, str]] | None = None
    instruction: str = ""
    context: str = ""

    def text(self, tokenizer, template: str, system: str | None) -> str:
        if self.turns is not None:
            return conversation_prompt(tokenizer, with_system(self.turns, system), template)
        return instruction_prompt(tokenizer, self.instruction, self.context, template, system)


def parse_prompt(record: dict[str, Any], where: str) -> Prompt:
    reference = record.get("response", record.get("output"))
    if "messages" in record:
        return Prompt({"messages": record["messages"]}, reference, turns=_turns(record, where))
    key = "instruction" if "instruction" in record else "prompt" if "prompt" in record else None
    if key is None:
        raise DataError(f"{where}: expected an 'instruction', 'prompt' or 'messages' field")
    instruction = _string(record, key, where)
    ctx_key = "context" if "context" in record else "input" if "input" in record else None
    context = _string(record, ctx_key, where) if ctx_key and record[ctx_key] is not None else ""
    echo = {key: instruction, **({"context": context} if context else {})}
    return Prompt(echo, reference, instruction=instruction, context=context)


def load_prompts(spec: str) -> list[Prompt]:
    """Every prompt of ``spec``, validated before any model is loaded."""
    prompts = [parse_prompt(record, where) for where, record in read_prompts(spec)]
    if not prompts:
        raise DataError(f"--prompts: {spec}: no prompts")
    return prompts


def answer_prompts(bench, prompts: list[Prompt], template: str, sampling: SamplingConfig, out: TextIO) -> int:
    """Answer ``prompts`` and write one JSON line per prompt; the number answered."""
    texts = [p.text(bench.tokenizer, template, sampling.system) for p in prompts]
    answers = generate_texts(bench, texts, sampling)
    for prompt, answer in zip(prompts, answers):
        reference = {"reference": prompt.reference} if prompt.reference is not None else {}
        out.write(json.dumps({**prompt.echo, "response": answer, **reference}, ensure_ascii=False) + "\n")
    out.flush()
    return len(answers)
