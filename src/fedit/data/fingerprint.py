"""Tie a run to its data: absolute data paths in its config, and a fingerprint of the files.

A run directory stores ``data.json``: for ``--data`` and ``--test-data`` the files they named
when the run started, each with its size and sha256. ``--resume`` recomputes it and refuses a
difference, naming the file, so a resumed run never trains or evaluates on other records
without a word (a relative path typed in another folder, a client file edited in between).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

from fedit.config import Config, flag
from fedit.data.loading import DOLLY_HUB_ID, HUB, resolve_data_path
from fedit.errors import CheckpointError

DATA_FIELDS = ("data", "test_data")


def absolute_spec(spec: str | None) -> str | None:
    """A data path made absolute (as typed, symlinks kept); aliases such as ``dolly`` and
    anything that is not an existing path are returned unchanged."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    return os.path.abspath(path) if path.exists() else spec


def with_absolute_paths(cfg: Config) -> Config:
    """``cfg`` with --data and --test-data made absolute (what config.yaml stores)."""
    data = dataclasses.replace(cfg.data, data=absolute_spec(cfg.data.data),
                               test_data=absolute_spec(cfg.data.test_data))
    return dataclasses.replace(cfg, data=data)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    return {"path": os.path.abspath(path), "size": path.stat().st_size, "sha256": _sha256(path)}


def spec_fingerprint(spec: str) -> dict[str, Any]:
    """The files a data spec names now, with size and sha256 (the hub copy of Dolly: its id)."""
    files = resolve_data_path(spec)
    if files == HUB:
        return {"spec": spec, "hub": DOLLY_HUB_ID}
    # a save_to_disk folder is one source of several files (its .arrow shards, state.json...)
    paths = [f for p in map(Path, files) for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    return {"spec": spec, "files": [file_entry(f) for f in paths]}


def data_fingerprint(cfg: Config, fields: tuple[str, ...] = DATA_FIELDS) -> dict[str, Any]:
    """{field: fingerprint} of the data fields of ``cfg`` that are set (``fields``: which ones
    this runner reads; a Flower server reads only --test-data)."""
    out = {}
    for name in fields:
        spec = getattr(cfg.data, name)
        if spec is not None:
            out[name] = spec_fingerprint(spec)
    return out


def check_same_data(saved: dict[str, Any], now: dict[str, Any]) -> None:
    """Raise a one-line CheckpointError naming the first file that differs from the run's start."""
    for name, old in saved.items():
        new = now.get(name)
        if new is None:
            continue  # the field is no longer set: the config check reports that
        old_files = {f["path"]: f for f in old.get("files", [])}
        new_files = {f["path"]: f for f in new.get("files", [])}
        for path, before in old_files.items():
            after = new_files.get(path)
            if after is None:
                raise CheckpointError(f"--resume: {path} of {flag(name)} is gone since the run started; "
                                      "restore it, or start a new run with another --out")
            if after["size"] != before["size"] or after["sha256"] != before["sha256"]:
                raise CheckpointError(f"--resume: {path} changed since the run started (size {before['size']} -> "
                                      f"{after['size']} bytes, sha256 {before['sha256'][:12]} -> "
                                      f"{after['sha256'][:12]}); restore it, or start a new run with another --out")
        for path in new_files.keys() - old_files.keys():
            raise CheckpointError(f"--resume: {path} is in {flag(name)} now but was not when the run started; "
                                  "remove it, or start a new run with another --out")
        if old.get("hub") != new.get("hub"):
            raise CheckpointError(f"--resume: {flag(name)} {old['spec']} now reads "
                                  f"{new.get('hub') or 'local files'}, not {old.get('hub') or 'local files'} "
                                  "as when the run started")
