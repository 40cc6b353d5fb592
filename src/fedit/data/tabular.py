"""The formats fedit reads through Hugging Face ``datasets`` (the optional extra ``fedit[data]``):
CSV, Parquet and Arrow files, folders written by ``save_to_disk`` (``load_from_disk``) and
datasets of the hub or a local copy of a hub repository (``hub:``). Rows come back as plain
records with their place (``FILE: record N``) for fedit's own validation (fedit.data.records), so
errors read the same as for JSON. Local dataset scripts are never run (they are code, not data).

JSON and JSON Lines stay with fedit's own reader (fedit.data.loading): it names the line and
column of a syntax error, and keeps a record as written, where ``datasets`` would fill in missing
fields with nulls and coerce a column to one type.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedit.errors import DataError

# File suffix -> the `datasets` packaged builder that reads it.
BUILDERS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
SAVED_MARKERS = ("dataset_info.json", "state.json")  # what Dataset.save_to_disk writes beside its .arrow files
SAVED_DICT = "dataset_dict.json"                       # what DatasetDict.save_to_disk writes
INSTALL = "pip install 'fedit[data]'"


def is_saved_dataset(path: Path) -> bool:
    """A folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``."""
    return path.is_dir() and ((path / SAVED_DICT).is_file() or all((path / m).is_file() for m in SAVED_MARKERS))


def _datasets(what: str) -> Any:
    try:
        import datasets  # optional extra `fedit[data]`: imported here so fedit works without it
    except ImportError:
        raise DataError(f"{what}: reading it needs the datasets package ({INSTALL})") from None
    return datasets


def reason(exc: BaseException) -> str:
    """The first line of the innermost cause of an exception (``datasets`` wraps the parser's)."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bar per local file and no log line of ``datasets``' own while it reads one: fedit's
    log says what was read, and a failure is fedit's one-line error."""
    bars, log = datasets.is_progress_bar_enabled(), logging.getLogger("datasets")
    level = log.level
    datasets.disable_progress_bars()
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)
        if bars:
            datasets.enable_progress_bars()


def _csv_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read as CSV ({exc})") from None


def _load_file(path: Path, datasets: Any, cache: str) -> Any:
    builder = BUILDERS[path.suffix.lower()]
    kwargs: dict[str, Any] = {}
    if builder == "csv":  # CSV has no types: every cell is text, an empty cell an empty string
        header = _csv_header(path)
        if not header:
            raise DataError(f"{path}: empty CSV file (expected a header row naming the fields)")
        kwargs = {"features": datasets.Features({name: datasets.Value("string") for name in header}),
                  "na_filter": False}
    return datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache,
                                 keep_in_memory=True, **kwargs)


def _load_saved(path: Path, datasets: Any) -> Any:
    data = datasets.load_from_disk(str(path), keep_in_memory=True)
    if isinstance(data, datasets.DatasetDict):
        if len(data) != 1:
            example = "train" if "train" in data else sorted(data)[0]
            raise DataError(f"{path}: a saved DatasetDict with splits {', '.join(sorted(data))}; pass one split's "
                            f"folder, e.g. {path / example}")
        data = next(iter(data.values()))
    return data


def read_table(path: Path) -> Iterator[tuple[str, Any]]:
    """``(where, record)`` for each row of a CSV, Parquet or Arrow file or a ``save_to_disk`` folder."""
    datasets = _datasets(str(path))
    kind = "a saved dataset" if path.is_dir() else BUILDERS[path.suffix.lower()]
    with _quiet(datasets), tempfile.TemporaryDirectory(prefix="fedit-datasets-") as cache:  # no copy left behind
        try:
            rows = _load_saved(path, datasets) if path.is_dir() else _load_file(path, datasets, cache)
            records = rows.to_list()
        except DataError:
            raise
        except Exception as exc:  # a malformed file: the parser's own words, on one line
            raise DataError(f"{path}: cannot read as {kind} ({reason(exc)})") from None
    for index, record in enumerate(records):
        yield f"{path}: record {index + 1}", record


def load_hub_rows(name: str, split: str, spec: str) -> Any:
    """The rows of a hub dataset, or of a local copy of a hub repository (a folder of data files)."""
    local = Path(name).expanduser()
    if local.suffix == ".py" or (local.is_dir() and any(local.glob("*.py"))):
        raise DataError(f"{spec}: local dataset scripts are not run (they are code, not data); pass the data files "
                        "(.json, .jsonl, .csv, .parquet, .arrow) or their folder")
    datasets = _datasets(spec)
    try:
        if not local.exists():
            return datasets.load_dataset(name, split=split)   # cached in ~/.cache/huggingface, as hub downloads are
        with _quiet(datasets), tempfile.TemporaryDirectory(prefix="fedit-datasets-") as cache:
            return datasets.load_dataset(str(local), split=split, cache_dir=cache, keep_in_memory=True).to_list()
    except Exception as exc:  # offline, unknown dataset or split
        if local.exists():
            raise DataError(f"{spec}: cannot load split {split} of the folder {name} ({reason(exc)})") from None
        raise DataError(f"{spec}: cannot load {name} ({split}) from the Hugging Face hub ({reason(exc)}); download "
                        "it elsewhere and pass its data files or folder") from None
