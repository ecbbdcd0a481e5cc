"""Early stopping of one entry over the data's batches: stop once its metric is known well enough.

A built-in metric is a mean over samples (`metrics.PER_SAMPLE`), and every entry is measured on the same
samples as the unpruned model, so what an entry costs is best estimated sample by sample: the loss of
sample i is d_i = b_i - v_i (b the unpruned model's value, v the entry's; for fidelity and agreement
b_i = 1). After each batch, with n of the N samples seen, the estimate of the metric on all N samples is
baseline - mean(d), and its uncertainty the half-width

    h = z * sd(d) / sqrt(n) * sqrt((N - n) / (N - 1))      (z = 2: about 95%)

(the second factor because the N samples are all there is: at n = N the estimate is the exact value).
The entry stops when h <= max(relative * |mean(d)|, floor), and never before `min_samples`. Top-1 and
agreement count decisions (a sample's loss is 0 or 1, or a share of positions): 16 samples without a
changed decision do not show that none will change, so their sd is never taken below that of a 0/1
variable with (k + 1) / (n + 2) of the samples changed (k of n seen; Laplace's rule of succession).

Why that is enough for allocation: `prune --sens` compares losses with one threshold and interpolates
between the ratios of a row, so what it needs of each cell is its loss to a relative precision (10%
moves an interpolated ratio by at most a tenth of the step between two ratios, usually less than one
kept-channel step), and nothing finer than `floor` — a loss far below any threshold the allocation uses
(`adaptive` sets it to a small share of the cap). A user `--eval` function gives no per-sample values:
its entries always see all of its data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnxprune.analysis.metrics import Metric, Runner

RELATIVE_PRECISION = 0.1
Z = 2.0
MIN_SAMPLES = 16


@dataclass(frozen=True)
class StopRule:
    """When an entry's estimate is good enough; `floor` in units of the metric."""

    relative: float = RELATIVE_PRECISION
    floor: float = 0.0
    min_samples: int = MIN_SAMPLES
    z: float = Z

    def settled(self, losses: np.ndarray, total: int, discrete: bool = False) -> bool:
        """Whether the mean of all `total` samples' losses is known from these first ones (`discrete`:
        losses count changed decisions)."""
        n = len(losses)
        if n >= total:
            return True
        if n < min(self.min_samples, total):
            return False
        mean = float(np.mean(losses))
        if not math.isfinite(mean):
            return True  # no finite metric: the worst, however many samples follow
        sd = float(np.std(losses, ddof=1))
        if discrete:
            p = (np.count_nonzero(losses) + 1) / (n + 2)
            sd = max(sd, math.sqrt(p * (1 - p)))
        half = self.z * sd / math.sqrt(n) * math.sqrt((total - n) / (total - 1))
        return half <= max(self.relative * abs(mean), self.floor)


def estimate(metric: Metric, run: Runner, baseline: float, rule: StopRule) -> tuple[float, int]:
    """The metric of `run` on the whole data, estimated from as few batches as `rule` allows; returns
    (value, samples used)."""
    total = metric.data.samples
    losses: list[np.ndarray] = []
    seen = 0
    for k, feeds in metric.data.batches():
        values = metric.per_sample(run, k, feeds)
        losses.append(metric.paired(k) - values)
        seen += len(values)
        if rule.settled(np.concatenate(losses), total, metric.discrete):
            break
    return baseline - float(np.mean(np.concatenate(losses))), seen
