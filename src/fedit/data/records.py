"""One instruction-tuning record, from any of the forms fedit reads: Dolly (``instruction``,
``context``, ``response``, ``category``), Alpaca (``instruction``, ``input``, ``output``) or chat
(``messages`` / ShareGPT ``conversations``, fedit.data.chat), detected per record, with columns
renamed first (``--columns``). Every problem raises DataError naming the record (``where``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedit.data.chat import Turn, chat_field, is_plain_exchange, parse_turns, turns_to_json
from fedit.errors import DataError

DEFAULT_CATEGORY = "uncategorized"

# Fields the record forms define; any other scalar field of a record is kept in Example.extra.
KNOWN_FIELDS = frozenset({"instruction", "context", "input", "response", "output", "category",
                          "messages", "conversations"})


@dataclass(frozen=True)
class Example:
    """One instruction-tuning record; ``source`` (its file name) is kept for the ``files``
    partitioner but is not part of equality, so duplicates across files are still duplicates.
    ``messages`` holds the turns of a chat record (None for a single instruction/response);
    ``extra`` the record's other scalar fields, sorted by name (not part of equality either)."""

    instruction: str
    context: str
    response: str
    category: str
    source: str = field(default="", compare=False)
    messages: tuple[Turn, ...] | None = None
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The record in Dolly form, or ``messages`` form for a chat record, with its extra
        fields (the format partition files are written in)."""
        if self.messages is not None:
            out: dict[str, Any] = {"messages": turns_to_json(self.messages), "category": self.category}
        else:
            out = {"instruction": self.instruction, "context": self.context,
                   "response": self.response, "category": self.category}
        out.update((k, v) for k, v in self.extra if k not in out)
        return out

    def field_value(self, name: str) -> Any:
        """``category``, ``source`` or an extra field by name (None when the record lacks it)."""
        if name in ("category", "source"):
            return getattr(self, name)
        return dict(self.extra).get(name)


@dataclass
class LoadReport:
    """What loading read and dropped, for the run log and the run's metadata."""

    files: list[str]
    n_records: int
    n_duplicates: int
    n_empty_response: int
    n_kept: int
    n_empty_instruction: int = 0

    def summary(self) -> str:
        """One line for the log."""
        dropped = f"{self.n_duplicates} duplicates and {self.n_empty_response} empty responses"
        if self.n_empty_instruction:
            dropped = (f"{self.n_duplicates} duplicates, {self.n_empty_response} empty responses and "
                       f"{self.n_empty_instruction} empty instructions")
        return (f"{self.n_kept} examples from {len(self.files)} file(s) ({self.n_records} records read, "
                f"{dropped} dropped)")


def natural_sort_key(name: str) -> tuple[Any, ...]:
    """Sort key that puts ``local_training_2`` before ``local_training_10``."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def type_name(value: Any) -> str:
    names = {type(None): "null", dict: "object", list: "array"}
    return names.get(type(value), type(value).__name__)


def _field(record: Mapping[str, Any], names: tuple[str, ...], where: str, *, required: bool) -> str | None:
    """The first present field of ``names`` (None values count as absent unless required)."""
    for name in names:
        if name not in record or (record[name] is None and not required):
            continue
        value = record[name]
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type_name(value)}")
        return value
    if required:
        raise DataError(f"{where}: missing field {' or '.join(repr(n) for n in names)}")
    return None


def parse_record(record: Any, where: str, source: str = "") -> Example:
    """Validate one raw record (Dolly or Alpaca form) and turn it into an :class:`Example`.

    ``where`` prefixes error messages, e.g. ``data/x.jsonl: record 7 (line 7)``.
    """
    if not isinstance(record, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type_name(record)}")
    chat = chat_field(record)
    if chat is not None:
        return parse_chat_record(record, chat, where, source)
    instruction = _field(record, ("instruction",), where, required=True)
    response = _field(record, ("response", "output"), where, required=True)
    context = _field(record, ("context", "input"), where, required=False) or ""
    category = _field(record, ("category",), where, required=False) or DEFAULT_CATEGORY
    return Example(instruction, context, response, category, source=source,  # type: ignore[arg-type]
                   extra=record_extras(record))


def parse_chat_record(record: Mapping[str, Any], name: str, where: str, source: str = "") -> Example:
    """A ``messages`` or ``conversations`` record (see fedit.data.chat) as an :class:`Example`."""
    turns = parse_turns(record[name], name, where)
    category = _field(record, ("category",), where, required=False) or DEFAULT_CATEGORY
    instruction = next(content for role, content in turns if role == "user")
    response = turns[-1][1]
    messages = None if is_plain_exchange(turns) else turns
    return Example(instruction, "", response, category, source=source, messages=messages,
                   extra=record_extras(record))


def record_extras(record: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The record's scalar fields beyond the known ones (kept for by-field partitions)."""
    return tuple(sorted((k, v) for k, v in record.items()
                        if k not in KNOWN_FIELDS and isinstance(v, (str, int, float, bool))))


def remap_columns(record: Any, columns: Mapping[str, str], where: str) -> Any:
    """``record`` with ``columns`` ({field: column}) renamed to their fields (``--columns``)."""
    if not columns or not isinstance(record, Mapping):
        return record
    out = {k: v for k, v in record.items() if k not in columns.values()}
    for name, column in columns.items():
        if column not in record:
            raise DataError(f"{where}: missing column {column!r} (--columns {name}={column})")
        out[name] = record[column]
    return out
