"""Running entries for `analyze`: into the cache, counted (entries, cost, time), within a budget, in
adaptive rounds or all at once; and the progress of the setup before them.

`EntryRun.measure` hands jobs to an executor and writes each result to the cache as it comes; with a
cap (adaptive rounds) each job stops after the entry that passed it, and each entry after as few batches
as `sequential.StopRule` allows; `EntryRun.advance` takes chosen entries one batch further from where
they stopped (their `Tally` is in the cache), for the refinement of `adaptive.refine`. Cost is counted in
evaluations of the unpruned model on the whole data (`evaluator.Meter`), so it can be compared across
machines; the budget in wall-clock minutes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from onnxprune.analysis.adaptive import FLOOR_SHARE, REFINE_Z, Outcome, refine, run_rounds
from onnxprune.analysis.cache import AnalysisCache
from onnxprune.analysis.entries import Work
from onnxprune.analysis.evaluator import Evaluator, Payload, Result
from onnxprune.analysis.executors import make_executor, split_jobs
from onnxprune.analysis.metrics import PER_SAMPLE
from onnxprune.analysis.sequential import StopRule
from onnxprune.analysis.table import SensitivityTable
from onnxprune.graph.model import Model
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group
from onnxprune.pruning.cost import layer_costs
from onnxprune.pruning.plan import Planner


@dataclass
class Clock:
    """When the analysis started, and the progress callback (setup stages, then entries)."""

    start: float
    progress: Callable[[Progress], None] | None

    def stage(self, text: str) -> None:
        if self.progress is not None:
            self.progress(Progress(0, 0, elapsed=time.monotonic() - self.start, stage=f"setup: {text}"))


@dataclass
class EntryRun:
    """Evaluates entries into the cache for one `analyze` call, counting them, their cost, and the time."""

    payload: Payload
    evaluator: Evaluator | None
    workers: int
    ray: str | None
    budget: float | None  # minutes from `clock.start`
    cache: AnalysisCache
    chosen: dict
    clock: Clock
    done: int
    total: int
    spent: float  # evaluations of the whole model on the whole data
    build: Callable[[list[tuple[Group, str]]], Work]
    evaluated: int = 0
    complete: bool = True
    started: float | None = None  # when the first entry started (the rate and the ETA count from there)

    def measure(self, todo: list[tuple[Group, str]], cap: float | None) -> bool:
        """Evaluate `todo` (entries that change nothing get the baseline); with `cap`, each job stops after
        an entry that lost more, and each entry early by `StopRule`. False when the budget ran out."""
        work = self.build(todo)
        self.started = self.started or time.monotonic()
        for gid, ratio in work.unchanged:
            self.cache.put(gid, ratio, self.cache.baseline, self.chosen[(gid, ratio)])
            self.done += 1
        if cap is not None:
            for job in work.jobs:
                job.stop_below, job.rule = self.payload.baseline - cap, StopRule(floor=FLOOR_SHARE * cap)
        self._report()
        if not work.jobs:
            return True
        later = {(j.group, e.ratio): [1 + len(work.same.get((j.group, f.ratio), [])) for f in j.entries[i + 1:]]
                 for j in work.jobs for i, e in enumerate(j.entries)}
        executor = make_executor(self.workers, self.ray, self.evaluator)
        for result in executor.run(self.payload, split_jobs(work.jobs, self.workers)):
            self._put(result, work)
            self.done += 1 + len(work.same.get((result.group, result.ratio), []))
            self.evaluated += 1
            if cap is not None and (result.value is None or result.value < self.payload.baseline - cap):
                self.total -= sum(later[(result.group, result.ratio)])  # the rest of the row is not needed
            self._report()
            if self._past_budget():
                self.complete = False
                return False
        return True

    def advance(self, todo: list[tuple[Group, str]]) -> bool:
        """Go on with each early-stopped entry of `todo` by one more batch (the refinement of `adaptive`).
        False when the budget ran out."""
        work = self.build(todo)
        for job in work.jobs:
            job.batches = 1
            for entry in job.entries:
                entry.prior = self.cache.tally(job.group, entry.ratio)
        executor = make_executor(self.workers, self.ray, self.evaluator)
        for result in executor.run(self.payload, split_jobs(work.jobs, self.workers)):
            self._put(result, work)
            self._report()
            if self._past_budget():
                self.complete = False
                return False
        return True

    def spread(self, gid: str, ratio: str) -> float:
        """A measured cell's loss is known to this much (`REFINE_Z` standard errors; 0 when it saw every
        sample)."""
        tally = self.cache.tally(gid, ratio)
        metric = self.payload.metric
        return 0.0 if tally is None else tally.half_width(metric.data.samples, metric.discrete, REFINE_Z)

    def _put(self, result: Result, work: Work) -> None:
        """Write a result to the cache, for its entry and those zeroing the same channels; count its cost."""
        tally = result.tally if result.tally is not None and result.tally.n < self.payload.metric.data.samples else None
        for same in [result.ratio, *work.same.get((result.group, result.ratio), [])]:
            self.cache.put(result.group, same, result.value, self.chosen[(result.group, same)], tally)
        self.spent += result.cost or 0.0

    def _report(self) -> None:
        if self.clock.progress is not None:
            self.total = max(self.total, self.done)
            self.clock.progress(Progress(self.done, self.total, self.evaluated, time.monotonic() - self.started,
                                         cost=self.spent))

    def _past_budget(self) -> bool:
        budget = self.budget
        return budget is not None and time.monotonic() - self.clock.start > budget * 60


def adaptive_run(run: EntryRun, planner: Planner, targets: list[Group], keys: list[str], cover: float,
                 shares: list[float]) -> Outcome:
    """The rounds of `adaptive.run_rounds` over this run's cache, then the refinement of the plans at
    `shares` of MACs (`adaptive.refine`)."""

    def rows() -> dict[str, dict[str, float | None]]:
        return measured_rows(run.cache, targets, keys, run.chosen)

    def table() -> SensitivityTable:
        return SensitivityTable("", float(run.cache.baseline), {g: r for g, r in rows().items() if r},
                                {g.id: g.channels for g in targets})

    outcome = run_rounds(rows, targets, keys, float(run.cache.baseline), table, planner, cover, run.measure)
    if outcome.complete and shares and isinstance(run.payload.metric, PER_SAMPLE):
        outcome.complete = refine(table, targets, keys, planner, shares, run.spread, run.advance)
    return outcome


def measured_rows(cache: AnalysisCache, targets: list[Group], keys: list[str], chosen: dict) -> dict[str, dict]:
    """The measured cells of each group (those the cache holds for exactly the channels chosen now)."""
    return {g.id: {k: cache.get(g.id, k) for k in keys if cache.has(g.id, k, chosen[(g.id, k)])} for g in targets}


def macs_shares(model: Model) -> dict[str, float]:
    """Node name -> its share of the model's MACs: what analysis counts its cost in."""
    costs = layer_costs(model)
    total = sum(c.macs for c in costs)
    return {c.node: c.macs / total for c in costs if c.macs} if total else {}


def skipped_note(run: EntryRun, outcome: Outcome | None) -> list[str]:
    """What the budget left out, and what that means for plans."""
    if run.complete:
        return []
    if outcome is None:
        return [(f"the budget of {run.budget:g} min ran out: {run.total - run.done} entries not measured "
                 "(allocation goes no further than the last measured ratio of a row)")]
    cells = sum(len(v) for v in outcome.skipped.values())
    return [(f"the budget of {run.budget:g} min ran out: {cells} entries of {len(outcome.skipped)} groups "
             "not measured (allocation goes no further than the last measured ratio of a row)")]
