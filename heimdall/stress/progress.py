"""
Progress while a run goes on: a live rich progress bar on a terminal,
periodic plain lines otherwise (a CI log, a pipe), or nothing.
"""

from __future__ import annotations

from typing import IO, Optional

import attrs


@attrs.frozen
class Snapshot:
    elapsed: float
    responses: int
    rate: float  # responses per second over the last interval
    failed: int
    p99_ms: Optional[float]
    done_fraction: Optional[float]  # of the duration or request count
    #: Set when every worker has reported the interval that ended at
    #: C{elapsed}: the plain progress prints only these, so its lines
    #: hold whole intervals.
    interval_complete: bool = False


def _stats_text(s: Snapshot) -> str:
    p99 = f"{s.p99_ms:.2f} ms" if s.p99_ms is not None else "-"
    return f"{s.rate:>9,.0f} req/s  {s.responses:>10,} done  {s.failed:,} failed  p99 {p99}"


class PlainProgress:
    """
    One line every C{every} seconds.
    """

    def __init__(self, out: IO[str], every: float = 1.0) -> None:
        self.out = out
        self.every = every
        self._next = every

    def start(self) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        if not snapshot.interval_complete or snapshot.elapsed + 1e-9 < self._next:
            return
        while self._next <= snapshot.elapsed + 1e-9:
            self._next += self.every
        self.out.write(f"[{snapshot.elapsed:6.1f}s] {_stats_text(snapshot)}\n")
        self.out.flush()

    def note(self, text: str) -> None:
        self.out.write(f"{text}\n")
        self.out.flush()

    def stop(self) -> None:
        pass


class RichProgress:
    """
    A live bar: done so far, elapsed time, req/s, failures, p99 of the last
    interval.
    """

    def __init__(self, out: IO[str], title: str = "stress") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(file=out)
        self.progress = Progress(
            TextColumn(f"[bold]{title}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[stats]}"),
            console=self.console,
            refresh_per_second=4,
        )
        self.task = None

    def start(self) -> None:
        self.progress.start()
        self.task = self.progress.add_task("load", total=1.0, stats="starting")

    def update(self, snapshot: Snapshot) -> None:
        completed = snapshot.done_fraction if snapshot.done_fraction is not None else 0.0
        self.progress.update(self.task, completed=min(completed, 1.0), stats=_stats_text(snapshot))

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=1.0)
        self.progress.stop()


class NoProgress:
    def start(self) -> None:
        pass

    def update(self, snapshot: Snapshot) -> None:
        pass

    def note(self, text: str) -> None:
        pass

    def stop(self) -> None:
        pass


def make_progress(out: IO[str], quiet: bool, every: float):
    if quiet:
        return NoProgress()
    isatty = getattr(out, "isatty", None)
    if isatty is not None and isatty():
        try:
            return RichProgress(out)
        except ImportError:  # rich is a dependency, but degrade rather than fail
            pass
    return PlainProgress(out, every)
