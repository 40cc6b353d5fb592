"""``OUT/judge.jsonl``: every request the judge sent and the reply it got, one JSON line each, so a
paid run can be audited and re-scored, and a rerun (after a crash, or with more systems) reuses the
replies it has instead of paying for them again.

A request is known by a digest of what decides its reply (model, temperature, reply limit, the
messages); the same request asked again (``--judge-repeats``, an unparsable verdict asked once more)
is its next occurrence: occurrence n of a request in this run reuses stored reply n. Lines are
appended and flushed one at a time (also from several threads); a line cut short by a crash is
skipped when the file is read back. Failed requests are not recorded (a rerun asks them again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Callable

from fedit.experiment.settings import JudgeSettings
from fedit.runners.checkpoint import utc_now

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]


def request_key(settings: JudgeSettings, messages: Messages) -> str:
    what = {"model": settings.model, "temperature": settings.temperature, "max_tokens": settings.max_tokens,
            "messages": messages}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


class JudgeLog:
    """``complete(messages) -> reply`` that answers from ``path`` when it can, else asks ``complete``
    and appends the exchange to ``path``."""

    def __init__(self, path: Path, complete: Callable[[Messages], str], settings: JudgeSettings) -> None:
        self.path, self.complete, self.settings = Path(path), complete, settings
        self.stored: dict[tuple[str, int], str] = {}
        self.used: Counter = Counter()
        self.reused = 0
        self.lock = threading.Lock()
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        text = self.path.read_text(encoding="utf-8", errors="replace")
        if text and not text.endswith("\n"):   # a line cut short by a crash: the next one starts afresh
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("\n")
        skipped = 0
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                self.stored[rec["key"], int(rec["n"])] = str(rec["reply"])
            except (ValueError, KeyError, TypeError):
                skipped += 1
        if skipped:
            logger.warning("judge: %d damaged line(s) of %s skipped (asked again if needed)", skipped, self.path)
        logger.info("judge: %d stored replies in %s", len(self.stored), self.path)

    def __call__(self, messages: Messages) -> str:
        key = request_key(self.settings, messages)
        with self.lock:
            n = self.used[key]
            self.used[key] += 1
            if (key, n) in self.stored:
                self.reused += 1
                return self.stored[key, n]
        reply = self.complete(messages)
        s = self.settings
        line = json.dumps({"key": key, "n": n, "time": utc_now(), "url": s.url, "model": s.model,
                           "temperature": s.temperature, "max_tokens": s.max_tokens, "messages": messages,
                           "reply": reply}, ensure_ascii=False) + "\n"
        with self.lock:
            self.stored[key, n] = reply
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        return reply
