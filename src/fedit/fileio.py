"""Atomic file writes: a temporary file in the same folder, flushed and renamed into place, so a
reader (or a crash) never sees half a file and an existing file is either old or new, never mixed.

Temporaries carry the writer's PID in their name (``.NAME.PID.HEX.tmp`` files,
``.NAME.tmp-PID-HEX`` folders), so the next start can remove what a crashed writer left behind
(:func:`remove_stale_temporaries`) without touching a temporary that a live process is writing.
Everything is created with the process umask (never ``mkdtemp``'s 0700): a serving container or
another user of the group can read what fedit writes, as the umask says.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import IO, Callable

logger = logging.getLogger(__name__)

# Names of temporaries (current and older fedit); the group is the writer's PID when the name has one.
_TEMP_NAMES = (
    re.compile(r"^\.tmp-.+-(\d+)$"),                                  # checkpoints/.tmp-round_NNNN-PID (older)
    re.compile(r"^\..+\.(?:tmp|old)-(?:(\d+)-)?[A-Za-z0-9_]+$"),      # .NAME.tmp-PID-HEX, mkdtemp's .NAME.tmp-XXXX
    re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$"),                   # .NAME.PID.HEX.tmp (atomic_write)
)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object], *,
                 private: bool = False) -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``.
    The file's mode follows the umask (0666 & ~umask), or is 0600 from its creation on when
    ``private`` (a key: never readable by others, not even for a moment)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def make_temp_dir(target: str | os.PathLike[str], kind: str = "tmp") -> Path:
    """A new empty folder beside ``target`` (``.NAME.KIND-PID-HEX``), to be filled and renamed to
    ``target``; its mode follows the umask, like every folder ``os.mkdir`` makes."""
    target = Path(target)
    while True:
        path = target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            path.mkdir()
            return path
        except FileExistsError:  # 2**32 names: only a clash with a leftover of a reused PID
            continue


def current_umask() -> int:
    """The process umask, read without changing it (Linux exposes it in /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def apply_umask(folder: str | os.PathLike[str]) -> None:
    """Give ``folder`` and everything in it the modes the umask allows (0666/0777 minus the umask):
    some writers (safetensors) create their files 0600 whatever the umask says."""
    mask = current_umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():  # a temporary of this process at a (re)start is a leftover too
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temporary(path: Path) -> bool:
    """True for a temporary (by its name) whose writer is gone: no PID in its name, or a dead one."""
    for pattern in _TEMP_NAMES:
        match = pattern.match(path.name)
        if match:
            return match.group(1) is None or not _writer_alive(int(match.group(1)))
    return False


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries a crashed writer left directly in ``folder``; return them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if not stale_temporary(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    if removed:
        logger.info("removed %d temporary file(s)/folder(s) left by an interrupted write in %s",
                    len(removed), folder)
    return removed


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move folder ``src`` to ``dst``; an existing ``dst`` is renamed aside first and removed only
    after ``src`` is in place (put back if that move fails), so ``dst`` is never lost."""
    src, dst = Path(src), Path(dst)
    if not dst.exists():
        os.replace(src, dst)
        return
    old = make_temp_dir(dst, "old")
    os.replace(dst, old / dst.name)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(old / dst.name, dst)   # the old folder back where it was
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
