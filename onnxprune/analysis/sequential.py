"""Early stopping of one entry over the data's batches: stop once its metric is known well enough.

A built-in metric is a mean over samples (`metrics.PER_SAMPLE`), and every entry is measured on the same
samples as the unpruned model, so what an entry costs is best estimated sample by sample: the loss of
sample i is d_i = b_i - v_i (b the unpruned model's value, v the entry's; for fidelity and agreement
b_i = 1). After each batch, with n of the N samples seen, the estimate of the metric on all N samples is
baseline - mean(d), and its uncertainty the half-width

    h = z * sd(d) / sqrt(n) * sqrt((N - n) / (N - 1))      (z = 2: about 95%)

(the second factor because the N samples are all there is: at n = N the estimate is the exact value).
The entry stops when h <= max(relative * |mean(d)|, floor), and never before `min_samples` (8, one
batch of the adaptive analysis). Top-1 and agreement count decisions (a sample's loss is 0 or 1, or a
share of positions): 8 samples without a changed decision do not show that none will change, so their
sd is never taken below that of a 0/1 variable with (k + 1) / (n + 2) of the samples changed (k of n
seen; Laplace's rule of succession).

What each entry keeps is its `Tally` (count, sum and sum of squares of the losses, decisions changed):
enough for h, and for going on later from where it stopped, batch by batch, without running the
samples already seen again. That is how `adaptive.refine` makes the plans at named shares of MACs
exact: cells whose interval could move a channel count there go on until it cannot (at the latest,
all N samples: then the cell is the full table's number).

What the rule alone is enough for: each cell's loss to about 10% (on the ResNet-50 of
benchmarks/analysis_cost.py the cells of 16 samples were within 1.0% (sd) of the full table's, those of
8 within 1.4%), which ranks the groups, but allocation interpolates between the two cells around
its threshold and rounds to aligned channel counts, so an error of 1% still moves a group one step where
its interpolated ratio lies near a rounding boundary (4 of 37 groups at 50% of MACs there). Plans
that must be the full table's are `refine`'s job, not a tighter rule's: a tighter rule pays for every
cell, refinement only for the few near a boundary. A user `--eval` function gives no per-sample values:
its entries always see all of its data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.metrics import Metric, Runner

RELATIVE_PRECISION = 0.1
Z = 2.0
MIN_SAMPLES = 8


@dataclass(frozen=True)
class Tally:
    """What an entry's samples so far say about its loss: their count, sum, sum of squares, and how many
    lost anything (changed decisions, for top-1 and agreement). Enough to go on where it stopped."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    changed: int = 0

    def add(self, losses: np.ndarray) -> Tally:
        losses = np.asarray(losses, dtype=np.float64)
        return Tally(self.n + len(losses), self.total + float(np.sum(losses)),
                     self.squares + float(np.sum(losses**2)), self.changed + int(np.count_nonzero(losses)))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def half_width(self, samples: int, discrete: bool = False, z: float = Z) -> float:
        """The ~95% half-width of the mean loss over all `samples` as estimated from these (0 once every
        sample is seen; inf before two are)."""
        if self.n >= samples:
            return 0.0
        if self.n < 2:
            return math.inf
        if not math.isfinite(self.mean):
            return 0.0  # no finite metric: the worst, however many samples follow
        sd = math.sqrt(max(self.squares - self.n * self.mean**2, 0.0) / (self.n - 1))
        if discrete:
            p = (self.changed + 1) / (self.n + 2)
            sd = max(sd, math.sqrt(p * (1 - p)))
        return z * sd / math.sqrt(self.n) * math.sqrt((samples - self.n) / (samples - 1))

    def to_list(self) -> list[float]:
        return [self.n, self.total, self.squares, self.changed]

    @staticmethod
    def from_list(values: list) -> Tally:
        n, total, squares, changed = values
        return Tally(int(n), float(total), float(squares), int(changed))


@dataclass(frozen=True)
class StopRule:
    """When an entry's estimate is good enough; `floor` in units of the metric."""

    relative: float = RELATIVE_PRECISION
    floor: float = 0.0
    min_samples: int = MIN_SAMPLES
    z: float = Z

    def settled(self, tally: Tally, total: int, discrete: bool = False) -> bool:
        """Whether the mean of all `total` samples' losses is known from the first `tally.n` (`discrete`:
        losses count changed decisions)."""
        if tally.n >= total:
            return True
        if tally.n < min(self.min_samples, total):
            return False
        if not math.isfinite(tally.mean):
            return True  # no finite metric: the worst, however many samples follow
        return tally.half_width(total, discrete, self.z) <= max(self.relative * abs(tally.mean), self.floor)


def estimate(metric: Metric, run: Runner, baseline: float, rule: StopRule | None,
             prior: Tally | None = None, batches: int | None = None) -> tuple[float, Tally]:
    """The metric of `run` on the whole data, estimated from as few batches as `rule` allows (or from
    `batches` more), going on after the samples `prior` counts; returns the estimate and its tally."""
    total = metric.data.samples
    tally = prior or Tally()
    first = -(-tally.n // metric.data.batch_size)  # the samples counted so far are whole batches
    ran = 0
    for k, feeds in metric.data.batches():
        if k < first:
            continue
        tally = tally.add(metric.paired(k) - metric.per_sample(run, k, feeds))
        ran += 1
        if (batches is not None and ran >= batches) or (rule is not None and rule.settled(tally, total, metric.discrete)):
            break
    return baseline - tally.mean, tally
