"""Progress reporting for the I/O edges (pipeline functions), never for pure stages.

Pipeline functions take a :class:`Reporter`; the CLI passes a rich one, tests and
notebooks get the silent default. Stage functions only see an ``advance(n)`` callable.

Warnings (input that is passed over: files of other types, an id field no record has)
are one ``warning: ...`` line on stderr from every reporter, the silent one (``--quiet``,
notebooks) included: quiet hides progress, never what was silently dropped.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

Advance = Callable[..., None]


class Reporter(Protocol):
    def track(self, description: str, *, total: int | None = None, unit: str = "docs") -> contextlib.AbstractContextManager[Advance]:
        """A context manager yielding ``advance(n, **extra)``; ``extra`` may carry ``tokens=``, or
        ``resumed=True`` for items an interrupted run finished (counted as done, not in the rate)."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...


class SilentReporter:
    @contextlib.contextmanager
    def track(self, description: str, *, total: int | None = None, unit: str = "docs") -> Iterator[Advance]:
        yield lambda n=1, **extra: None

    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)


class RichReporter:
    """Rich progress bars on stderr with items/s, where given tokens/s, and the time remaining.

    Rates and the time remaining are over the work this run did: items a resumed run
    reused would otherwise make it look many times faster than it is.
    """

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    @contextlib.contextmanager
    def track(self, description: str, *, total: int | None = None, unit: str = "docs") -> Iterator[Advance]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(f"{unit}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.console, transient=False, disable=not self.console.is_terminal) as bar:
            task = bar.add_task(description, total=total, rate="")
            counted = {"items": 0, "tokens": 0, "resumed": 0}

            def advance(n: int = 1, **extra: int) -> None:
                counted["resumed" if extra.get("resumed") else "items"] += n
                counted["tokens"] += extra.get("tokens", 0)
                bar.update(task, advance=n, rate=_rate_text(counted, bar.tasks[0].elapsed, total, unit))

            yield advance
        if not self.console.is_terminal:
            # Bars are hidden when stderr is not a terminal (logs, CI): print one summary line instead.
            elapsed = max(1e-9, _elapsed(bar))
            line = f"{description}: {counted['items']:,} {unit} in {elapsed:.1f}s"
            if counted["resumed"]:
                line += f" ({counted['resumed']:,} more reused from an interrupted run)"
            if counted["tokens"]:
                line += f", {counted['tokens']:,} tokens ({counted['tokens'] / elapsed / 1e6:.2f}M tok/s)"
            self.console.print(line, soft_wrap=True)  # a log line stays one line, whatever the width

    def info(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def warn(self, message: str) -> None:
        # Through the console, so a live bar is redrawn below it; unwrapped and without markup,
        # so it stays one line that scripts can grep, whatever brackets a path holds.
        self.console.print(f"warning: {message}", soft_wrap=True, markup=False, highlight=False)


def _elapsed(bar: object) -> float:
    tasks = getattr(bar, "tasks", [])
    return float(tasks[0].finished_time or tasks[0].elapsed or 0.0) if tasks else 0.0


def _rate_text(counted: dict[str, int], elapsed: float | None, total: int | None, unit: str) -> str:
    """``"123 docs/s  4.5M tok/s  0:01:10 left"``: this run's rates, and the time left at that rate."""
    if not elapsed or not counted["items"]:
        return ""
    per_second = counted["items"] / elapsed
    text = f"{per_second:,.0f} {unit}/s"
    if counted["tokens"]:
        text += f"  {counted['tokens'] / elapsed / 1e6:,.2f}M tok/s"
    if total is not None:
        left = max(0, total - counted["items"] - counted["resumed"]) / per_second
        text += f"  {int(left) // 3600}:{int(left) % 3600 // 60:02d}:{int(left) % 60:02d} left"
    return text
