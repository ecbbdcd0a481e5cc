"""Progress of a long run, and a text bar with ETA for a terminal (or sparse lines for a log file)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TextIO


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
    def eta(self) -> float | None:
        """Seconds left at the rate of the entries computed so far (None before the first one)."""
        if not self.evaluated:
            return None
        return (self.total - self.done) * self.elapsed / self.evaluated


def clock(seconds: float | None) -> str:
    """12 -> '0:12', 3725 -> '1:02:05'."""
    if seconds is None:
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressBar:
    """Redraws one line on a terminal; elsewhere prints a line every 10% so logs stay short."""

    def __init__(self, stream: TextIO, label: str = "analyze", width: int = 28, unit: str = "entries"):
        self.stream = stream
        self.label = label
        self.unit = unit
        self.width = width
        self.tty = stream.isatty()
        self.last_draw = 0.0
        self.last_tenth = -1
        self.drawn = False
        self.stage: str | None = None

    def update(self, p: Progress) -> None:
        if p.stage != self.stage:  # a new part of the run starts on its own line
            if self.tty and self.drawn:
                self.stream.write("\n")
            self.stage, self.last_tenth, self.drawn, self.last_draw = p.stage, -1, False, 0.0
        finished = p.done >= p.total
        now = time.monotonic()
        if self.tty:
            if finished or now - self.last_draw >= 0.1:
                self.stream.write("\r" + self.line(p))
                self.stream.flush()
                self.drawn, self.last_draw = True, now
            return
        tenth = p.done * 10 // max(p.total, 1)
        if tenth != self.last_tenth:
            self.last_tenth = tenth
            self.stream.write(self.line(p) + "\n")
            self.stream.flush()

    def line(self, p: Progress) -> str:
        if not p.total and not p.done:  # a setup step: no count yet, only what runs and for how long
            return f"{p.stage or self.label} ...  {clock(p.elapsed)} elapsed"
        fill = self.width * p.done // max(p.total, 1)
        bar = "#" * fill + "." * (self.width - fill)
        rate = f", {p.evaluated / p.elapsed * 60:.1f}/min" if p.evaluated and p.elapsed > 0 else ""
        cost = f", cost {p.cost:.1f}" if p.cost else ""
        return (f"{p.stage or self.label} [{bar}] {p.done}/{p.total} {self.unit}  {clock(p.elapsed)} elapsed{rate}"
                f"{cost}, ETA {clock(p.eta if p.done < p.total else 0)}")

    def close(self) -> None:
        if self.tty and self.drawn:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
