"""Adaptive analysis: measure each row of the table only as far as `prune --sens` can use it.

Allocation (`table.sensitivity_ratios`) gives every group the largest ratio whose loss, on the row made
monotone (a running maximum), stays under one threshold T, interpolating between the row's two ratios on
either side of T; T is bisected until the MACs land on the target. So at threshold T a row is read up to
its first ratio whose loss exceeds T and not one cell further: once a row has passed the largest threshold
any plan will use, the rest of it changes no plan, and it need not be measured.

Which threshold is the largest? A plan that removes at most `cover` of the MACs (default 60%) uses a
threshold no larger than T(cover), the one at which the allocation removes `cover`. T(cover) depends on
the table, so the rows are measured in rounds:

1. every row, in ratio order, until its loss passes the cap (first `FIRST_CAP`, a fifth of the baseline
   metric: a plan at 30-60% of MACs rarely lets one group alone lose that much; on the ResNet-50 of
   benchmarks/analysis_cost.py this first round already decides plans up to 70% of MACs, and a quarter
   cost 7% more for 79%);
2. the table now reads exactly as the full one for every threshold below `decided`, the smallest loss
   at which an unfinished row stopped; if the allocation at `decided` removes `cover` of the MACs, done;
3. otherwise the cap becomes T(cover) on the table as measured (rows stopping where they stop: more
   cells can only lower it), and the rows that stopped below it go on; after that round the allocation
   at `decided` removes at least `cover` (or every row is complete). Where the rows as measured cannot
   remove `cover` at all, the cap doubles and the round repeats.

4. refinement (`refine`): the plans at the shares of MACs the user names (`--plans`, default 0.5) are
   made the full table's. Each cell was estimated from its first samples (`sequential`), to 1-2% on the
   ResNet-50; allocation interpolates between the two cells around its threshold and rounds to aligned
   channel counts, so even 1% moves a group one step where it lies near a rounding boundary (4 of 37
   groups at 50% of MACs without this step). At a named share's threshold T each group's count is read
   off its row twice: every estimated cell one standard error low (`REFINE_Z`) with T 1% higher, and
   every one a standard error high with T 1% lower (all cells of a row at the same end: a reading more
   extreme than independent errors make). Where the two counts differ, the cells between the two
   readings' crossings go on by one batch (`sequential.Tally` keeps where each stopped) and T is found
   again; that ends when every count is certain, or rests on cells measured on every sample (the full
   table's numbers). It pays only where a plan is decided: on the ResNet-50 of
   benchmarks/analysis_cost.py, 10 evaluations for the plan at 50%, where measuring the two cells around
   the threshold of every group on every sample costs 29 (two standard errors instead of one: 12; on the
   YOLOv8n detector, 25 against 38 at two).

The cells left out are recorded as "not measured, worse than" the metric where their row stopped
(`SensitivityTable.worse_than`), which allocation reads as "never past the last measured ratio"; the
table records `decided_macs`, the share of MACs up to which its plans are the full table's (given the
same numbers in the cells it has: each cell itself is estimated from as few samples as `sequential`
allows). Analysis cost (in evaluations of the whole model on the whole data) therefore follows the
groups that matter, not groups x ratios.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from onnxprune.analysis.table import SensitivityTable, allocation_curves, envelope, largest_ratio, loss_ratios
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Planner

DEFAULT_COVER = 0.6  # plans up to 60% of MACs removed are decided
FIRST_CAP = 0.2  # the first round stops a row once it has lost a fifth of the baseline metric
DEFAULT_PLANS = (0.5,)  # the shares of MACs whose plans are refined unless the user names others
REFINE_Z = 1.0  # refinement reads each estimated cell at +-1 standard error (`undecided`)
THRESHOLD_WINDOW = 0.01  # a count must hold for thresholds 1% either side of the plan's (`undecided`)
FLOOR_SHARE = 0.05  # early stopping of a cell never needs it finer than 5% of the cap (`sequential`)

Row = dict[str, float | None]  # ratio key -> metric (None: not finite), the measured cells of one group
Spread = Callable[[str, str], float]  # (group, ratio key) -> half-width of the cell's loss (0: exact)
Measure = Callable[[list[tuple[Group, str]], float], bool]  # entries, cap -> False when the budget ran out


@dataclass
class Outcome:
    """What the adaptive rounds left: the cap they ended with, and whether the budget cut them short."""

    cap: float
    complete: bool = True
    skipped: dict[str, list[str]] = field(default_factory=dict)  # group -> ratios left out by the budget


def pending(row: Row, keys: list[str], baseline: float, cap: float) -> list[str]:
    """The ratios of a row still to measure under `cap`: none once a measured cell lost more than `cap`
    (its first one counts: allocation reads no further), else every ratio after the last measured one."""
    for key in keys:
        if key not in row:
            return keys[keys.index(key):]
        if _loss(row[key], baseline) > cap:
            return []
    return []


def stopped_at(row: Row, keys: list[str]) -> str | None:
    """The last measured ratio of a row that is not complete (None when every ratio is measured)."""
    measured = [k for k in keys if k in row]
    return None if len(measured) == len(keys) else (measured[-1] if measured else "")


def decided(rows: dict[str, Row], keys: list[str], baseline: float) -> float:
    """The largest threshold up to which allocation reads every row exactly as it reads the full table:
    the smallest running-maximum loss at which an unfinished row stops (inf when every row is complete)."""
    limit = math.inf
    for row in rows.values():
        last = stopped_at(row, keys)
        if last is None:
            continue
        if not last:
            return 0.0
        measured = [k for k in keys if k in row]
        limit = min(limit, max(_loss(row[k], baseline) for k in measured))
    return limit


def removed_at(table: SensitivityTable, candidates: list[Group], planner: Planner, threshold: float) -> float:
    """The share of MACs the allocation by `table` removes at `threshold` (as `prune --sens` does)."""
    if not planner.macs_before:
        return 0.0
    ratios = loss_ratios(allocation_curves(table, candidates), threshold)
    return 1 - planner.cost(planner.removal_of(planner.counts(ratios)))[0] / planner.macs_before


def cover_threshold(table: SensitivityTable, candidates: list[Group], planner: Planner, cover: float) -> float:
    """The smallest threshold at which the allocation by `table` removes `cover` of the MACs (inf when it
    cannot): with the rows as measured, an upper bound of the full table's."""
    losses = [loss for gid in table.groups for _, loss in table.curve(gid) if math.isfinite(loss)]
    high = max(losses, default=0.0) * (1 + 1e-9) + 1e-12
    if removed_at(table, candidates, planner, high) < cover:
        return math.inf
    low = 0.0
    for _ in range(40):
        mid = (low + high) / 2
        if removed_at(table, candidates, planner, mid) >= cover:
            high = mid
        else:
            low = mid
    return high


def run_rounds(rows: Callable[[], dict[str, Row]], targets: list[Group], keys: list[str], baseline: float,
               table: Callable[[], SensitivityTable], planner: Planner, cover: float, measure: Measure) -> Outcome:
    """Measure rows round by round (see the module docstring) through `measure`; `rows` and `table` read
    what has been measured so far."""
    scale = abs(baseline) or 1.0
    cap = FIRST_CAP * scale
    while True:
        current = rows()
        todo = [(g, k) for g in targets for k in pending(current.get(g.id, {}), keys, baseline, cap)]
        if todo:
            if not measure(todo, cap):
                return Outcome(cap, False, _skipped(rows(), targets, keys, baseline, cap))
            continue
        limit = decided(current, keys, baseline)
        if not math.isfinite(limit) or removed_at(table(), targets, planner, limit * (1 - 1e-9)) >= cover:
            return Outcome(cap)
        raised = cover_threshold(table(), targets, planner, cover)
        if raised <= cap:  # cannot happen with exact arithmetic; never loop
            return Outcome(cap)
        cap = raised if math.isfinite(raised) else 2 * cap


def undecided(table: SensitivityTable, candidates: list[Group], planner: Planner, shares: list[float],
              spread: Spread, window: float = THRESHOLD_WINDOW) -> set[tuple[str, str]]:
    """(group, ratio key) of the estimated cells whose uncertainty could change a channel count of the
    plan at one of `shares` of MACs.

    At the plan's threshold T a group's count is read off its row; with every estimated cell at the low
    end of its interval (loss - spread) and T a little higher (`window`), and again at the high end with T
    a little lower, the count must come out the same. Where it does not, the cells between the running
    maximum below T and the crossing above it, on either extreme, are what could move it.
    """
    out: set[tuple[str, str]] = set()
    for share in shares:
        threshold = cover_threshold(table, candidates, planner, share)
        if not math.isfinite(threshold):
            continue
        for gid, row in table.groups.items():
            cells = sorted([(k, _loss(v, table.baseline)) for k, v in row.items()]
                           + [(k, math.inf) for k in table.worse_than.get(gid, {})], key=lambda c: float(c[0]))
            half = {k: spread(gid, k) if k in row else 0.0 for k, _ in cells}
            if not any(half.values()):
                continue
            most = [(k, loss - half[k]) for k, loss in cells]
            least = [(k, loss + half[k]) for k, loss in cells]
            high, low = threshold * (1 + window), threshold * (1 - window)
            if planner.counts({gid: _ratio(most, high)}) == planner.counts({gid: _ratio(least, low)}):
                continue
            keys = [k for k, _ in cells]
            first = keys.index(_below(least, low)) if _below(least, low) is not None else 0
            last = keys.index(_above(most, high)) if _above(most, high) is not None else len(keys) - 1
            out.update((gid, k) for k in keys[first:last + 1] if half[k] > 0)
    return out


def _ratio(cells: list[tuple[str, float]], threshold: float) -> float:
    return largest_ratio(envelope([(float(k), loss) for k, loss in cells]), threshold)


def _below(cells: list[tuple[str, float]], threshold: float) -> str | None:
    """The cell that sets the running maximum just below `threshold` (None: the row starts above it)."""
    top_key, top = None, -math.inf
    for key, loss in cells:
        if loss > threshold:
            break
        if loss >= top:
            top_key, top = key, loss
    return top_key


def _above(cells: list[tuple[str, float]], threshold: float) -> str | None:
    """The first cell above `threshold` (None: the whole row stays below)."""
    return next((key for key, loss in cells if loss > threshold), None)


def refine(table: Callable[[], SensitivityTable], targets: list[Group], keys: list[str], planner: Planner,
           shares: list[float], spread: Spread, advance: Callable[[list[tuple[Group, str]]], bool]) -> bool:
    """Advance the `undecided` cells by one batch each and look again, until none is left (a cell ends,
    at the latest, on every sample: exact, so this ends). False when the budget ran out."""
    while True:
        wanted = undecided(table(), targets, planner, shares, spread)
        todo = [(g, k) for g in targets for k in keys if (g.id, k) in wanted]
        if not todo:
            return True
        if not advance(todo):
            return False


def _skipped(rows: dict[str, Row], targets: list[Group], keys: list[str], baseline: float,
             cap: float) -> dict[str, list[str]]:
    out = {}
    for g in targets:
        rest = pending(rows.get(g.id, {}), keys, baseline, cap)
        if rest:
            out[g.id] = rest
    return out


def bounds(rows: dict[str, Row], keys: list[str], baseline: float, cap: float) -> dict[str, dict[str, float | None]]:
    """The cells left out of each row that passed `cap`: "worse than" the lowest metric measured in it
    (rows the budget cut short have none: their cells are simply not measured)."""
    out: dict[str, dict[str, float | None]] = {}
    for gid, row in rows.items():
        measured = [k for k in keys if k in row]
        if not measured or len(measured) == len(keys) or pending(row, keys, baseline, cap):
            continue
        values = [row[k] for k in measured]
        worst = None if any(v is None for v in values) else min(values)
        out[gid] = {k: worst for k in keys if k not in row}
    return out


def _loss(value: float | None, baseline: float) -> float:
    return math.inf if value is None else baseline - value
