"""Load instruction-tuning records from JSON / JSONL files (fedit's own reader), CSV / Parquet /
Arrow files and ``save_to_disk`` folders (through ``datasets``, fedit.data.tabular), folders of
such files, the ``dolly`` alias, or a Hugging Face dataset (``hub:ORG/NAME[:split]``).

Records come in Dolly form (``instruction``, ``context``, ``response``, ``category``), Alpaca
form (``instruction``, ``input``, ``output``, optional ``category``) or chat form (``messages``
role/content turns, or ShareGPT ``conversations``; see fedit.data.chat), detected per record, and
become :class:`Example`. ``--columns FIELD=COLUMN,...`` renames a source's columns first. Other
scalar fields (a user id, a source) are kept on the record (``Example.extra``), e.g. for
``--partition by-field:FIELD``. Every problem raises :class:`~fedit.errors.DataError` with one line
naming the file and the record, so users can fix their data without reading a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedit.config import parse_columns
from fedit.data.records import Example, LoadReport, natural_sort_key, parse_record, remap_columns, type_name
from fedit.data.tabular import BUILDERS, is_saved_dataset, load_hub_rows, read_table
from fedit.errors import DataError

logger = logging.getLogger(__name__)

DOLLY_ENV = "FEDIT_DOLLY_DIR"  # folder laid out like shepherd_10clients (local_training_*.json, global_test.json)
DOLLY_HUB_ID = "databricks/databricks-dolly-15k"
DOLLY_TEST_PER_CATEGORY = 10  # held-out records per category when the hub copy is used (as Shepherd does)
DOLLY_TEST_SEED = 42
HUB: Literal["hub"] = "hub"
_ALIASES = {"dolly": "train", "dolly:train": "train", "dolly:test": "test"}
_DOLLY_PATTERNS = {"train": "local_training_*.json", "test": "global_test.json"}
_SUFFIXES = (".json", ".jsonl", *BUILDERS)
FORMATS = ".json, .jsonl, .csv, .parquet or .arrow"
HUB_PREFIX = "hub:"   # --data hub:ORG/NAME[:split]
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None


def _too_deep(path: Path) -> DataError:
    return DataError(f"{path}: record nesting too deep to parse (is this an instruction data file?)")


def _read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, raw record)`` for each record of a .json array or a .jsonl file, or of a
    table (fedit.data.tabular: .csv, .parquet, .arrow, a ``save_to_disk`` folder)."""
    if path.is_dir() or path.suffix.lower() in BUILDERS:
        yield from read_table(path)
        return
    text = _read_text(path)
    if path.suffix.lower() == ".jsonl":
        number = 0
        for lineno, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028 may be in strings
            if not line.strip():
                continue
            number += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: line {lineno}, column {exc.colno}: invalid JSON ({exc.msg})") from None
            except RecursionError:
                raise _too_deep(path) from None
            yield f"{path}: record {number} (line {lineno})", record
        return
    try:
        data = json.loads(text)
    except RecursionError:
        raise _too_deep(path) from None
    except json.JSONDecodeError as exc:
        hint = "; JSON Lines files must be named .jsonl" if exc.msg == "Extra data" else ""
        raise DataError(f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg}){hint}") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type_name(data)}")
    for index, record in enumerate(data):
        yield f"{path}: record {index + 1} (index {index})", record


def _files_at(path: Path) -> list[Path]:
    """The data sources a path names: the file itself, a ``save_to_disk`` folder, or the data files
    directly in a folder (each one source: one client of ``--partition files``)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if is_saved_dataset(path):
        return [path]
    if path.is_dir():
        entries = list(path.iterdir())
        if not entries:
            raise DataError(f"{path}: folder is empty")
        files = [p for p in entries if p.is_file() and p.suffix.lower() in _SUFFIXES and not p.name.startswith(".")]
        if not files:
            raise DataError(f"{path}: no {FORMATS} files in folder (nor a datasets save_to_disk folder)")
        return sorted(files, key=lambda p: natural_sort_key(p.name))
    if not path.is_file():  # reading a FIFO would block forever, a device never ends
        raise DataError(f"{path}: not a regular file (a pipe, device or socket cannot be --data)")
    if path.suffix.lower() not in _SUFFIXES:
        raise DataError(f"{path}: expected a {FORMATS} file, a folder of them or a datasets save_to_disk folder")
    return [path]


def _filter(examples: Iterable[Example], files: list[str], label: str, *, dedupe: bool,
            exclude: frozenset[Example] = frozenset()) -> tuple[list[Example], LoadReport]:
    """Drop empty instructions, empty responses and (if ``dedupe``) exact duplicates, keeping
    order; ``exclude`` counts as already seen (keeps held-out records out of training)."""
    kept: list[Example] = []
    seen: set[Example] = set()
    n_records = n_duplicates = n_empty = n_no_instruction = 0
    for example in examples:
        n_records += 1
        if not example.instruction.strip():
            n_no_instruction += 1
        elif not example.response.strip():
            n_empty += 1
        elif example in exclude or (dedupe and example in seen):
            n_duplicates += 1
        else:
            seen.add(example)
            kept.append(example)
    report = LoadReport(files, n_records, n_duplicates, n_empty, len(kept), n_no_instruction)
    if not kept:
        raise DataError(f"{label}: no usable records ({report.summary()})")
    logger.debug("%s: %s", label, report.summary())
    return kept, report


def _load_files(files: list[Path], label: str, *, dedupe: bool,
                columns: str | None = None) -> tuple[list[Example], LoadReport]:
    mapping = parse_columns(columns)
    examples = (parse_record(remap_columns(record, mapping, where), where, source=path.name)
                for path in files for where, record in _read_records(path))
    return _filter(examples, [str(p) for p in files], label, dedupe=dedupe)


def load_examples(path: str | os.PathLike[str], *, dedupe: bool = True,
                  columns: str | None = None) -> tuple[list[Example], LoadReport]:
    """Load a .json (array) or .jsonl file, or every such file directly inside a folder (sorted
    by name), dropping empty responses and exact duplicates. ``source`` is each file's name;
    ``columns`` (``--columns``) renames fields first."""
    return _load_files(_files_at(Path(path).expanduser()), str(path), dedupe=dedupe, columns=columns)


def _dolly_files(root: Path, split: str) -> list[Path]:
    pattern = _DOLLY_PATTERNS[split]
    if not root.is_dir():
        raise DataError(f"{DOLLY_ENV}={root}: no such folder")
    files = sorted(root.glob(pattern), key=lambda p: natural_sort_key(p.name))
    if not files:
        raise DataError(f"{DOLLY_ENV}={root}: no {pattern} in folder "
                        "(expected local_training_*.json for training and global_test.json for test)")
    return files


def resolve_data_path(spec: str) -> list[Path] | Literal["hub"]:
    """The files a data spec names, or :data:`HUB` when it is a dolly alias with no local copy.

    Aliases: ``dolly`` (training files only, so the test split never leaks into training) and
    ``dolly:test``, read from ``$FEDIT_DOLLY_DIR``. Anything else is a file or folder path
    (to load a local folder literally named ``dolly``, pass ``./dolly``).
    """
    split = _ALIASES.get(spec.strip().lower())
    if split is None:
        if spec.lower().startswith("dolly:") and not Path(spec).exists():
            raise DataError(f"{spec}: unknown dolly split; choose one of {', '.join(_ALIASES)}")
        return _files_at(Path(spec).expanduser())
    root = os.environ.get(DOLLY_ENV)
    return _dolly_files(Path(root).expanduser(), split) if root else HUB


def _held_out(categories: Sequence[str], per_category: int, seed: int) -> set[int]:
    """Indices of ``per_category`` random records of each category (Shepherd's test split)."""
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for category in sorted(set(categories)):
        indices = [i for i, c in enumerate(categories) if c == category]
        held.update(int(i) for i in rng.choice(indices, size=min(per_category, len(indices)), replace=False))
    return held


def _load_dolly_hub(split: str, *, dedupe: bool) -> tuple[list[Example], LoadReport]:
    """databricks-dolly-15k from the hub, split into train / held-out test (10 per category)."""
    try:
        import datasets  # optional extra `fedit[data]`; imported here so fedit works without it

        rows = datasets.load_dataset(DOLLY_HUB_ID, split="train")
    except Exception as exc:  # offline, missing package, hub errors: all mean "use a local copy"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise DataError(f"dolly: the Hugging Face hub is unreachable ({reason}); set {DOLLY_ENV} to a "
                        "local copy (local_training_*.json + global_test.json) or pass a data path") from None
    where = f"hf://datasets/{DOLLY_HUB_ID}"
    examples = [parse_record(row, f"{where}: record {i + 1} (index {i})", source=DOLLY_HUB_ID)
                for i, row in enumerate(rows)]
    held = _held_out([e.category for e in examples], DOLLY_TEST_PER_CATEGORY, DOLLY_TEST_SEED)
    test = [e for i, e in enumerate(examples) if i in held]
    if split == "test":
        return _filter(test, [where], "dolly:test", dedupe=dedupe)
    train = (e for i, e in enumerate(examples) if i not in held)
    logger.info("dolly from the hub has a single source: the 'files' partitioner gives one client")
    return _filter(train, [where], "dolly", dedupe=dedupe, exclude=frozenset(test))


def load_source(spec: str, *, dedupe: bool = True, columns: str | None = None) -> tuple[list[Example], LoadReport]:
    """Load a data spec: ``dolly``, ``dolly:test``, ``hub:ORG/NAME[:split]`` or a file/folder path
    (see :func:`resolve_data_path`); ``columns`` (``--columns``) renames fields first."""
    if spec.startswith(HUB_PREFIX):
        return load_hub_dataset(spec, dedupe=dedupe, columns=columns)
    files = resolve_data_path(spec)
    if files == HUB:
        return _load_dolly_hub(_ALIASES[spec.strip().lower()], dedupe=dedupe)
    return _load_files(files, spec, dedupe=dedupe, columns=columns)


def parse_hub_spec(spec: str) -> tuple[str, str]:
    """``hub:ORG/NAME[:split]`` (or ``hub:FOLDER[:split]``, a local copy of a hub repository) ->
    (dataset id or folder, split; ``train`` when not given)."""
    name, sep, split = spec[len(HUB_PREFIX):].strip().partition(":")
    local = bool(name) and Path(name).expanduser().exists()
    if not (local or re.fullmatch(r"[\w\-.]+/[\w\-.]+", name)) or (sep and not split):
        raise DataError(f"{spec}: expected hub:ORG/NAME or hub:ORG/NAME:SPLIT (a Hugging Face dataset id), "
                        "or hub:FOLDER[:SPLIT] (a local copy of one)")
    return name, split or "train"


def load_hub_dataset(spec: str, *, dedupe: bool = True, columns: str | None = None) -> tuple[list[Example], LoadReport]:
    """A Hugging Face dataset split through ``datasets`` (optional extra ``fedit[data]``); its
    rows are validated as records of any form, named ``hf://datasets/ORG/NAME[split]: record N``."""
    name, split = parse_hub_spec(spec)
    local = Path(name).expanduser()
    if local.is_file() or is_saved_dataset(local):  # hub:FILE is the file itself, as --data FILE
        return _load_files(_files_at(local), spec, dedupe=dedupe, columns=columns)
    rows = load_hub_rows(name, split, spec)
    mapping = parse_columns(columns)
    where = f"{name}[{split}]" if Path(name).expanduser().exists() else f"hf://datasets/{name}[{split}]"
    examples = (parse_record(remap_columns(row, mapping, at), at, source=name)
                for i, row in enumerate(rows) for at in [f"{where}: record {i + 1} (index {i})"])
    return _filter(examples, [where], spec, dedupe=dedupe)
