"""Progress of a long run: the `Progress` the library reports, and the bar the command line draws of it.

On a terminal the bar is rich's: a spinner while the run sets up (loading, the baseline, starting
workers: before the first entry), then per stage a bar with the count, the rate, the time elapsed and
the ETA, redrawn in place, with anything printed meanwhile shown above it. Anywhere else (a log file, a
pipe, CI) it writes plain lines and no control codes: one when a stage starts and one every 10%, so logs
stay short and can be grepped. Rate and ETA count only the entries computed in this run: entries taken
from a cache finish at once and would promise too much.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Self, TextIO


@dataclass
class Progress:
    """`done` of `total` entries; `evaluated` of them were computed (not cached) in `elapsed` seconds."""

    done: int
    total: int
    evaluated: int = 0
    elapsed: float = 0.0
    stage: str | None = None  # which part of a run with several (shown instead of the bar's label)
    cost: float | None = None  # what ran so far, in the run's own unit (analysis: evaluations of the model)

    @property
    def setup(self) -> bool:
        """A step before the first entry (loading, the baseline): nothing to count yet."""
        return not self.total and not self.done

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate of the entries computed so far (None before the first one)."""
        if self.done >= self.total:
            return 0.0
        if not self.evaluated:
            return None
        return (self.total - self.done) * self.elapsed / self.evaluated

    def rate(self, unit: str) -> str:
        """'2.5 entries/s', or '12.0 s/layer' when slower than one a second ('?' before the first one)."""
        if not self.evaluated or self.elapsed <= 0:
            return f"? {unit}/s"
        per_second = self.evaluated / self.elapsed
        return f"{per_second:.1f} {unit}/s" if per_second >= 1 else f"{1 / per_second:.1f} s/{unit.rstrip('s')}"


def clock(seconds: float | None) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """The command line's view of `Progress` reports on `stream` (use it as a context manager)."""

    def __init__(self, stream: TextIO, label: str = "analyze", unit: str = "entries", width: int = 28):
        self.stream, self.label, self.unit, self.width = stream, label, unit, width
        self.tty = _is_terminal(stream)
        self.stage: str | None = None
        self.last_tenth = -1
        self.live = None  # rich's Progress on a terminal, while it runs
        self.setup_task = self.task = None  # rich's task ids: the setup spinner, the stage's bar

    def __enter__(self) -> Self:
        if self.tty:
            self.live = _rich_progress(self.stream)
            self.live.start()
            self.setup_task = self.live.add_task(f"{self.label}: setting up", total=None, count="", rate="", eta="")
        return self

    def update(self, p: Progress) -> None:
        """Show a report: a new stage starts its own bar (or line)."""
        new = p.stage != self.stage or (self.task is None and self.live is not None)
        self.stage = p.stage
        if self.live is not None:
            self._draw(p, new)
            return
        tenth = p.done * 10 // max(p.total, 1)
        if new or tenth != self.last_tenth:
            self.last_tenth = tenth
            self.stream.write(self.line(p) + "\n")
            self.stream.flush()

    def _draw(self, p: Progress, new: bool) -> None:
        if p.setup and self.setup_task is not None:  # a step of the setup: the spinner says which
            self.live.update(self.setup_task, description=f"{self.label}: {p.stage or 'setting up'}")
            return
        if self.setup_task is not None:  # the setup phase ends with the first counted report
            self.live.update(self.setup_task, total=1, completed=1, description=f"{self.label}: set up")
            self.setup_task = None
        if new:
            self.task = self.live.add_task(p.stage or self.label, total=p.total, count="", rate="", eta="")
        self.live.update(self.task, total=p.total, completed=p.done, count=f"{p.done}/{p.total} {self.unit}",
                         rate=p.rate(self.unit), eta=f"ETA {clock(p.eta)}")

    def line(self, p: Progress) -> str:
        """The plain line of a report (off a terminal)."""
        if p.setup:  # no count yet, only what runs and for how long
            return f"{p.stage or self.label} ...  {clock(p.elapsed)} elapsed"
        fill = self.width * p.done // max(p.total, 1)
        bar = "#" * fill + "." * (self.width - fill)
        cost = f", cost {p.cost:.1f}" if p.cost else ""
        return (f"{p.stage or self.label} [{bar}] {p.done}/{p.total} {self.unit}  {clock(p.elapsed)} elapsed, "
                f"{p.rate(self.unit)}{cost}, ETA {clock(p.eta)}")

    def __exit__(self, *exc: object) -> None:
        if self.live is None:
            return
        if self.setup_task is not None:  # no report came (an error, or nothing to do): no setup line stays
            self.live.remove_task(self.setup_task)
        self.live.stop()
        self.live = None


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or a fake stream
        return False


def _rich_progress(stream: TextIO):
    """rich's live progress display on `stream`: spinner, label, bar, count, rate, elapsed, ETA. What the
    run prints to stderr meanwhile shows above it, and to stdout too when that is the terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Live

    return Live(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"), console=Console(file=stream), refresh_per_second=8,
                redirect_stdout=_is_terminal(sys.stdout))  # output bound for a pipe stays there
