"""Progress of long commands on stderr (rich): one line per step, with elapsed time.

Shown only when stderr is a terminal and the caller did not ask for quiet; otherwise every
method is a no-op, so library code can report steps unconditionally. Results always go to
stdout; progress never does.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

Advance = Callable[[int, int], None]  # (done, total)


class Steps:
    """A live list of steps. Use as a context manager; `step()` opens one step."""

    def __init__(self, *, quiet: bool = False, stream: Any = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and bool(getattr(self.stream, "isatty", lambda: False)())
        self._progress: Any = None

    def __enter__(self) -> "Steps":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(SpinnerColumn(finished_text="✓"), TextColumn("{task.description}"),
                                      BarColumn(bar_width=24), TextColumn("{task.fields[amount]}"),
                                      TimeElapsedColumn(), console=Console(file=self.stream), transient=False)
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stops the display (the cursor ends on a fresh line, so errors print below it)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    @contextmanager
    def step(self, description: str, total: Optional[int] = None) -> Iterator[Advance]:
        """One step, shown while the body runs. Yields `advance(done, total)` for steps that
        know their size in bytes; a step without a size shows a spinner and elapsed time."""
        if self._progress is None:
            yield lambda done, total: None
            return
        task = self._progress.add_task(description, total=total, amount="")

        def advance(done: int, total_now: int) -> None:
            self._progress.update(task, completed=done, total=total_now,
                                  amount=f"{done / 2**20:,.0f} / {total_now / 2**20:,.0f} MiB")

        try:
            yield advance
        except BaseException:
            self._progress.update(task, description=f"{description} [red]failed[/red]")
            raise
        current = self._progress.tasks[task]
        self._progress.update(task, total=current.total or 1, completed=current.total or 1)

    def note(self, text: str) -> None:
        """A line printed above the live steps (or nothing when disabled)."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
