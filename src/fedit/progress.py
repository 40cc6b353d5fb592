"""Progress reporting for long loops (rounds, clients, steps), decoupled from the library.

The library calls a :class:`Progress`; the CLI passes a rich-based one, tests pass nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class Task:
    def advance(self, n: int = 1, **fields) -> None:
        """Move the bar forward (fields: e.g. ``loss=1.23`` shown beside it)."""


class Progress:
    """No-op progress: the default when nobody is watching."""

    @contextmanager
    def task(self, description: str, total: int | None, keep: bool = False) -> Iterator[Task]:
        """A bar for one loop; ``keep`` leaves it on screen when done (the outermost loop)."""
        yield Task()


class _RichTask(Task):
    def __init__(self, bar, task_id) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, n: int = 1, **fields) -> None:
        self.bar.update(self.task_id, advance=n, info=" ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                                else f"{k} {v}" for k, v in fields.items()))


class RichProgress(Progress):
    """Nested rich progress bars with time left; inner bars disappear when done."""

    def __init__(self, console) -> None:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bars = Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(),
                         TextColumn("{task.fields[info]}"), console=console, transient=False)

    def __enter__(self) -> RichProgress:
        self.bars.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.__exit__(*exc)

    @contextmanager
    def task(self, description: str, total: int | None, keep: bool = False) -> Iterator[Task]:
        task_id = self.bars.add_task(description, total=total, info="")
        try:
            yield _RichTask(self.bars, task_id)
        finally:
            if not keep:
                self.bars.remove_task(task_id)
