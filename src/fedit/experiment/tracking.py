"""One progress display for a whole experiment: an outer bar over all pending work, so its
time-left estimate covers every system; inner bars show the current system's rounds, clients,
steps and generation batches.

The outer bar counts work units of about one training step each. Measured on 2 CPU cores with
SmolLM2 (batch 8, max length 256): a batch of 8 greedy answers costs about max_new_tokens / 16
steps, a held-out loss pass over 8 records about a quarter of a step (see ``units``).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from fedit.progress import Progress, Task


def units(*, gen_batches: int = 0, max_new_tokens: int = 0, loss_batches: int = 0) -> float:
    """Work units (about one training step each) of generation and held-out loss batches."""
    return gen_batches * max_new_tokens / 16 + loss_batches / 4


class _Both(Task):
    def __init__(self, inner: Task, outer: Task, scale: float = 1.0) -> None:
        self.inner, self.outer, self.scale = inner, outer, scale

    def advance(self, n: int = 1, **fields) -> None:
        self.inner.advance(n, **fields)
        self.outer.advance(n * self.scale)


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
    def phase(self, description: str, total: int | None, scale: float = 1.0) -> Iterator[Task]:
        """A bar for one step of the work; each advance moves the outer bar by ``scale`` units."""
        with self.progress.task(description, total) as inner:
            yield _Both(inner, self.outer, scale)

    def skip(self, n: float) -> None:
        """Work done without a bar of its own (loss passes) or already done earlier (a reused adapter)."""
        self.outer.advance(n)

    def forwarding(self) -> Progress:
        """A Progress for the fedit Simulation whose step bars also count on the outer bar."""
        return _Forwarding(self.progress, self.outer)
