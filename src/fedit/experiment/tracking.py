"""One progress display for a whole experiment: an outer bar over all pending work (training
steps of every system plus generation batches of every evaluation, roughly equal in cost on CPU
for the default 64 new tokens), so its time-left estimate covers all systems; inner bars show the
current system's rounds, clients and steps."""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from fedit.progress import Progress, Task


class _Both(Task):
    def __init__(self, inner: Task, outer: Task) -> None:
        self.inner, self.outer = inner, outer

    def advance(self, n: int = 1, **fields) -> None:
        self.inner.advance(n, **fields)
        self.outer.advance(n)


class _Forwarding(Progress):
    """Hands bars to the real progress; bars of training steps also move the outer bar."""

    def __init__(self, real: Progress, outer: Task) -> None:
        self.real, self.outer = real, outer

    @contextmanager
    def task(self, description: str, total: int | None, keep: bool = False) -> Iterator[Task]:
        with self.real.task(description, total, keep=keep) as inner:
            yield _Both(inner, self.outer) if description.endswith(" steps") else inner


class ExperimentProgress:
    def __init__(self, progress: Progress, total: float) -> None:
        self.progress, self.total = progress, total
        self._stack = ExitStack()
        self.outer: Task = Task()

    def __enter__(self) -> ExperimentProgress:
        self.outer = self._stack.enter_context(self.progress.task("experiment", self.total, keep=True))
        return self

    def __exit__(self, *exc) -> None:
        self._stack.__exit__(*exc)

    @contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Task]:
        with self.progress.task(description, total) as inner:
            yield _Both(inner, self.outer)

    def skip(self, n: int) -> None:
        """Work that turned out to be done already (a reused adapter)."""
        self.outer.advance(n)

    def forwarding(self) -> Progress:
        """A Progress for the fedit Simulation whose step bars also count on the outer bar."""
        return _Forwarding(self.progress, self.outer)
