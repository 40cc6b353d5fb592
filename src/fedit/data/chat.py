"""Chat records: ``messages`` (role/content turns, as TRL and OpenAI fine-tuning files) and
ShareGPT ``conversations`` (from/value turns), validated with the file and record they came from,
and tokenized with the loss on assistant turns only.

A record becomes an :class:`~fedit.data.loading.Example` whose ``instruction`` is its first user
turn and ``response`` its last assistant turn (so statistics, deduplication and the empty-response
check work as for every other form). A plain exchange (one user turn, one assistant turn, no
system prompt) IS an instruction record and is kept as one; anything richer keeps its turns in
``Example.messages``. Turns after the last assistant turn carry no loss and are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fedit.errors import DataError

ROLES = ("system", "user", "assistant")
# ShareGPT "from" values (as in FastChat / axolotl exports) -> chat roles
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "chatgpt": "assistant"}
CHAT_FIELDS = {"messages": ("role", "content"), "conversations": ("from", "value")}
Turn = tuple[str, str]   # (role, content)


def _type_name(value: Any) -> str:
    names = {type(None): "null", dict: "object", list: "array", str: "string"}
    return names.get(type(value), type(value).__name__)


def chat_field(record: Mapping[str, Any]) -> str | None:
    """``messages`` or ``conversations`` when the record is a chat record, else None."""
    return next((name for name in CHAT_FIELDS if name in record), None)


def parse_turns(value: Any, name: str, where: str) -> tuple[Turn, ...]:
    """Validate the turns of a chat record's ``name`` field (``messages`` or ``conversations``)."""
    role_key, content_key = CHAT_FIELDS[name]
    roles = {r: r for r in ROLES} if name == "messages" else SHAREGPT_ROLES
    if not isinstance(value, list):
        raise DataError(f"{where}: field {name!r} must be an array of turns, got {_type_name(value)}")
    if not value:
        raise DataError(f"{where}: field {name!r} is empty")
    turns: list[Turn] = []
    for index, turn in enumerate(value):
        at = f"{where}: {name}[{index}]"
        if not isinstance(turn, Mapping):
            raise DataError(f"{at} must be an object with {role_key!r} and {content_key!r}, got {_type_name(turn)}")
        for key in (role_key, content_key):
            if key not in turn:
                raise DataError(f"{at}: missing field {key!r}")
            if not isinstance(turn[key], str):
                raise DataError(f"{at}.{key} must be a string, got {_type_name(turn[key])}")
        role = roles.get(turn[role_key])
        if role is None:
            raise DataError(f"{at}.{role_key} {turn[role_key]!r} is not one of {', '.join(roles)}")
        if role == "system" and index > 0:
            raise DataError(f"{at}: a system turn may only come first")
        turns.append((role, turn[content_key]))
    return _check_dialogue(turns, name, where)


def _check_dialogue(turns: list[Turn], name: str, where: str) -> tuple[Turn, ...]:
    roles = [role for role, _ in turns]
    if "assistant" not in roles:
        raise DataError(f"{where}: {name} has no assistant turn to train on")
    first_assistant = roles.index("assistant")
    if "user" not in roles[:first_assistant]:
        raise DataError(f"{where}: {name}[{first_assistant}] is an assistant turn with no user turn before it")
    last = len(roles) - 1 - roles[::-1].index("assistant")
    return tuple(turns[:last + 1])   # trailing turns carry no loss


def is_plain_exchange(turns: Sequence[Turn]) -> bool:
    return [role for role, _ in turns] == ["user", "assistant"]


def turns_to_json(turns: Sequence[Turn]) -> list[dict[str, str]]:
    """The turns in ``messages`` form (how partition files store chat records)."""
    return [{"role": role, "content": content} for role, content in turns]
