"""The least-squares pieces that reconstruction, the greedy choice and `analyze
--reconstruct` share: which feature rows to sample, and ridge-regularized solves.

Rows: a conv contributes one row per output position; positions are drawn at random, spread evenly over
the samples: neighbouring positions are strongly correlated, so positions from many samples beat all
positions of a few, and A'A stays small whatever the feature map size. How many: at least
`ROWS_PER_UNKNOWN` per unknown, and more while the sums stay cheap — up to `FLOPS_PER_LAYER` multiply-adds
for A'A (rows x unknowns^2). Few rows per unknown over-fit the calibration rows: PP-OCRv4's recognizer
(256 lines; its layers mostly 1x1 convs and projections of 120-480 features) kept 96% of its exact strings
at 50% of MACs removed with these rows, 91% with 4 per unknown; the big layers, where rows cost the most, stay
at `ROWS_PER_UNKNOWN`.
"""

from __future__ import annotations

import math

import numpy as np

from onnxprune.recover.spd import spd_solve
from onnxprune.rules import LinearView

STABLE_RIDGE = 1e-4  # the ridge used where no held-out choice is made (choice of channels, tables)
SINGLE = 1024  # layers with more features per group keep their sums in float32 and solve by float32 Cholesky
ROWS_PER_UNKNOWN = 4
FLOPS_PER_LAYER = 1 << 32  # rows x unknowns^2 for A'A: 65536 rows up to 256 unknowns, then fewer
MIN_ROWS, MAX_ROWS = 4096, 65536


def wanted_rows(view: LinearView) -> int:
    """How many rows a layer's sums take (a few more: `sample_rows` takes as many from every sample)."""
    unknowns = view.features + 1
    return min(max(ROWS_PER_UNKNOWN * unknowns, FLOPS_PER_LAYER // unknowns**2, MIN_ROWS), MAX_ROWS)


def sample_rows(view: LinearView, x: np.ndarray, samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sample, output position) of the rows to take from a batch `x` of a layer's input: as many
    rows over all `samples` as the module says, spread evenly over the samples."""
    positions = view.positions(x)
    per_sample = max(1, min(positions, math.ceil(wanted_rows(view) / samples)))
    n = len(x)
    who = np.repeat(np.arange(n), per_sample)
    if per_sample < positions:
        return who, (rng.random((n, per_sample)) * positions).astype(np.int64).reshape(-1)
    return who, np.tile(np.arange(positions), n)


GRAM_BLOCK_BYTES = 8 << 20  # rows of A'A summed at a time (`add_gram`)


def _block_rows(gram: np.ndarray) -> int:
    """Rows of `gram` [groups, n, n] per block: `GRAM_BLOCK_BYTES` of it."""
    return max(1, GRAM_BLOCK_BYTES // max(1, len(gram) * gram.shape[-1] * gram.itemsize))


def add_gram(gram: np.ndarray, a: np.ndarray) -> None:
    """gram += a'a for rows `a` [groups, rows, n], on and below the diagonal only (`mirror` fills the
    rest in at the end), by blocks of rows of `gram`: no n x n temporary (85 MB for a ResNet-50 stage-4
    conv) and the flops of a symmetric product, at the speed of numpy's own (syrk) product."""
    n, step = gram.shape[-1], _block_rows(gram)
    for start in range(0, n, step):
        stop = min(start + step, n)
        gram[:, start:stop, :stop] += a[:, :, start:stop].transpose(0, 2, 1) @ a[:, :, :stop]


def mirror(gram: np.ndarray) -> np.ndarray:
    """`gram` [groups, n, n] with its upper triangle copied from the lower one (in place), as `add_gram`
    left it."""
    n, step = gram.shape[-1], _block_rows(gram)
    for start in range(step, n, step):
        stop = min(start + step, n)
        gram[:, :start, start:stop] = gram[:, start:stop, :start].transpose(0, 2, 1)
    return gram


class PendingRows:
    """Feature rows (and whatever goes with them) held back across batches until there are `enough` for
    one update of the sums. Every update of an n x n A'A is a pass over it (`add_gram`), whatever the
    number of rows: with a few hundred rows a batch, that cost more than the multiply-adds for the big
    layers (ResNet-50's 4609-feature convs get 430 rows a batch of 6 images)."""

    def __init__(self, enough: int):
        self.enough = max(1, enough)
        self.parts: list[tuple[np.ndarray, ...]] = []
        self.rows = 0

    def add(self, *arrays: np.ndarray) -> list[np.ndarray] | None:
        """Keep these [groups, rows, k] arrays; all kept so far, joined along the rows, once enough."""
        self.parts.append(arrays)
        self.rows += arrays[0].shape[1]
        return self.take() if self.rows >= self.enough else None

    def take(self) -> list[np.ndarray] | None:
        """All kept so far, joined along the rows (None if nothing), and forget them."""
        if not self.parts:
            return None
        joined = [np.concatenate(part, axis=1) if len(part) > 1 else part[0] for part in zip(*self.parts)]
        self.parts, self.rows = [], 0
        return joined


def _ridge_lhs(gram: np.ndarray, index: np.ndarray, ridge: float, regularized: int) -> np.ndarray:
    """gram[index, index] (a new array) with `ridge` times the mean energy of the first `regularized` of
    `index` added to their diagonal."""
    return add_ridge(gram[np.ix_(index, index)], ridge, regularized)


def add_ridge(matrix: np.ndarray, ridge: float, regularized: int) -> np.ndarray:
    """`matrix` (changed in place) with `ridge` times the mean of the first `regularized` diagonal entries
    added to those entries (the column of ones, last, gets none)."""
    diag = np.arange(regularized)
    if diag.size:
        matrix[diag, diag] += ridge * max(float(np.mean(matrix[diag, diag])), 1e-12)
    return matrix


def ridge_solve(gram: np.ndarray, index: np.ndarray, rhs: np.ndarray, ridge: float, regularized: int) -> np.ndarray:
    """x with gram[index, index] x = rhs, `ridge` times their mean energy added to the first `regularized`
    of `index` (not to the column of ones); least squares where the system is singular.

    A float32 gram is solved by float32 Cholesky (`spd`: numpy would solve a float64 copy by LU, 4x the
    time), a float64 one by numpy."""
    lhs = _ridge_lhs(gram, index, ridge, regularized)
    if lhs.dtype == np.float32:
        try:
            return spd_solve(lhs, rhs)
        except np.linalg.LinAlgError:  # not positive definite: the general solver below, on a new copy
            lhs = _ridge_lhs(gram, index, ridge, regularized)
    rhs = rhs.astype(lhs.dtype, copy=False)
    try:
        return np.linalg.solve(lhs, rhs)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(lhs, rhs, rcond=None)[0]
