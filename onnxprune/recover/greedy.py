"""Reconstruction-aware channel choice, `--criterion greedy`: remove first the channels whose loss the
re-solved layers can best make up for (ThiNet and He et al. 2017 choose this way; the updates are those
of Optimal Brain Surgeon, applied to whole channels).

For a layer y = A @ W reading the group (A: sampled feature rows with a column of ones, G = A'A), once
features S are gone and the rest re-solved by least squares, the output error grows by

    tr(W_S' [H_SS]^-1 W_S),   H = G^-1 over the features still there, W the weights re-solved so far,

and removing S updates both in closed form: W <- W - H[:, S] H_SS^-1 W_S and H <- H - H[:, S] H_SS^-1 H[S, :].
So channels are removed in steps: each step scores every remaining channel by that error (relative to
the layer's output energy, summed over the layers reading the group), removes the lowest `1/STEPS` of
the group at once and updates. The order of removal is the score: a plan that removes n channels of a
group removes the first n, so one pass serves every ratio. A magnitude criterion sees weights, `act` sees
weights and activations one channel at a time; this one also sees what the kept channels can carry for
a removed one (two correlated channels: one of them can go, its twin takes over). The error each step
adds (the same expression, for the channels removed together) gives each group an error-vs-ratio curve
on the way: what reconstruction cannot recover at each ratio, which `allocation` sets ratios by.

G comes from the unpruned model (one pass, `grams.layer_sums`); a group is scored as soon as the last
layer reading it has been seen, and its matrices are dropped. Layers read through a grouped conv are
left out (their removed inputs take their outputs with them); groups no matrix layer reads fall back to L2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnxprune.graph.model import Model
from onnxprune.process import release_memory
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group
from onnxprune.recover.grams import (
    group_features,
    input_grams,
    readers_of,
    reading_views,
    weights_with_bias,
)
from onnxprune.recover.lstsq import STABLE_RIDGE, add_ridge
from onnxprune.recover.spd import spd_inverse
from onnxprune.recover.staged import Batches
from onnxprune.recover.targets import KeptTargets

STEPS = 64  # removal steps per group: each removes 1/STEPS of its channels (one channel a step below 64)
SHRINK_BYTES = 1 << 22  # rows of H updated or copied at a time (under the malloc mmap threshold)
COMPACT = 0.75  # H and W are copied down to their rows still there once fewer than this share are
LAST = 0.05  # stop once this share of a group is left; the rest are ranked by their last scores


@dataclass
class _Reader:
    """One layer reading the group, as the greedy removal sees it. Each step updates `inverse` and
    `weights` in place (their removed rows are left behind, never read again); once fewer than `COMPACT`
    of their rows are still there, they are copied down to those: so a step costs less as the group
    shrinks, without copying the whole matrix at every step."""

    inverse: np.ndarray  # H (the inverse of the regularized A'A) over the rows still stored
    weights: np.ndarray  # [those rows, outputs]: re-solved for the channels removed so far
    blocks: np.ndarray  # [group channels, k]: each group channel's features (numbered as at the start)
    energy: float  # output energy on the calibration rows, to make layers comparable
    row: np.ndarray  # original feature -> its row in `inverse` and `weights` (-1 once removed)
    memory: np.ndarray | None = None  # flat memory holding `inverse` that compaction may write over

    def costs(self, channels: np.ndarray) -> np.ndarray:
        """Per channel: the output error its removal alone adds, relative to the layer's output energy."""
        index = self.row[self.blocks[channels]]  # [n, k]
        h = self.inverse[index[:, :, None], index[:, None, :]]
        w = self.weights[index]
        ww = np.einsum("nko,nlo->nkl", w, w)
        return np.einsum("nkl,nkl->n", symmetric_inverse(h), ww) / self.energy

    def remove(self, channels: np.ndarray) -> float:
        """Remove these channels together; returns the output error that adds (relative, as `costs`)."""
        features = self.blocks[channels].reshape(-1)
        gone = self.row[features]
        columns = self.inverse[:, gone]
        block = symmetric_inverse(columns[gone].astype(np.float64)).astype(self.inverse.dtype)
        moved = block @ self.weights[gone]
        added = float(np.einsum("ko,ko->", self.weights[gone], moved, dtype=np.float64)) / self.energy
        self.weights -= columns @ moved
        _subtract_product(self.inverse, columns @ block, columns)
        self.row[features] = -1
        there = self.row >= 0
        if np.count_nonzero(there) < COMPACT * len(self.inverse):
            keep = np.sort(self.row[there])
            self.inverse, self.memory = _shrunk(self.inverse, keep, self.memory)
            self.weights = self.weights[keep]
            self.row[there] = np.searchsorted(keep, self.row[there])
        return added


def _block_rows(width: int, itemsize: int) -> int:
    """Rows of `width` items per block: `SHRINK_BYTES` of them."""
    return max(1, SHRINK_BYTES // max(width * itemsize, 1))


def _subtract_product(matrix: np.ndarray, left: np.ndarray, right: np.ndarray) -> None:
    """matrix -= left @ right' in place, by blocks of rows (no temporary of the matrix's size)."""
    rows = _block_rows(matrix.shape[1], matrix.itemsize)
    for start in range(0, len(matrix), rows):
        matrix[start:start + rows] -= left[start:start + rows] @ right.T


def _shrunk(inverse: np.ndarray, keep: np.ndarray, memory: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """inverse[keep, keep], and the flat memory holding it. By blocks of rows written from the start of
    `memory` (flat, holding `inverse` as a row-major view, maybe with longer rows) when it is given: row i
    of the result lands at or before the old row keep[i], which is read first. So no array of its size is
    made (a fresh one is page-faulted in)."""
    m = keep.size
    flat = memory if memory is not None else np.empty(m * m, inverse.dtype)
    rows = _block_rows(m, inverse.itemsize)
    for start in range(0, m, rows):
        stop = min(start + rows, m)
        flat[start * m:stop * m] = inverse[keep[start:stop]][:, keep].reshape(-1)
    return flat[:m * m].reshape(m, m), flat


def symmetric_inverse(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a symmetric matrix (or of each of a stack); the pseudo-inverse where one is singular."""
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(matrix, hermitian=True)


def regularized_inverse(gram: np.ndarray, regularized: int) -> np.ndarray | None:
    """H: the inverse of A'A with the ridge on its first `regularized` features (all but a column of ones,
    last, where the layer has one). A float32 A'A
    (layers over `SINGLE` features) is inverted in place by float32 Cholesky and H stays float32: a
    float64 copy of a 4609-feature A'A and its inverse would be 340 MB. None when that factorization
    fails (not positive definite in float32): it has overwritten A'A, and the layer is left out."""
    if gram.dtype == np.float64:
        return symmetric_inverse(add_ridge(gram.copy(), STABLE_RIDGE, regularized))
    try:
        return spd_inverse(add_ridge(gram, STABLE_RIDGE, regularized))
    except np.linalg.LinAlgError:
        return None


def _reader(inverse: np.ndarray, weights: np.ndarray, energy: float, feature_channel: np.ndarray,
            channels: int, sole: bool = False) -> _Reader | None:
    """A `_Reader` for the group's features of one layer (None when its channels do not all have the same
    number of features there). Only the group's block of H and rows of W are kept: removing some of its
    features changes those by the Schur complement within that block alone, so each reader updates its
    own block in place (the readers of a layer read disjoint features); the `sole` reader of a layer
    also compacts its block over H's own memory (for a ResNet-50 stage-4 conv, no second 85 MB array)."""
    features = np.flatnonzero(feature_channel >= 0)
    blocks = [np.flatnonzero(feature_channel[features] == c) for c in range(channels)]
    if len({b.size for b in blocks}) != 1 or blocks[0].size == 0:
        return None
    if features[-1] - features[0] + 1 == features.size:  # a view (compacted over only by the sole reader)
        block = inverse[features[0]:features[-1] + 1, features[0]:features[-1] + 1]
        memory = inverse.reshape(-1) if sole and inverse.flags.c_contiguous else None
    else:
        block = inverse[np.ix_(features, features)]
        memory = block.reshape(-1)
    return _Reader(block, weights[features], np.stack(blocks), energy, np.arange(features.size), memory)


def removal_order(readers: list[_Reader], channels: int) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Per group channel: its place in the greedy removal order (0 goes first); and the error curve:
    (fraction of the group removed, the output error the re-solved readers cannot recover, relative to
    each one's output energy and summed over them) after each step, from (0, 0) on."""
    rank = np.zeros(channels)
    alive = np.arange(channels)
    step = max(1, -(-channels // STEPS))
    removed, error = 0, 0.0
    curve = [(0.0, 0.0)]
    while alive.size > max(1, round(LAST * channels)):
        costs = sum(r.costs(alive) for r in readers)
        order = np.argsort(costs, kind="stable")
        take = alive[order[:min(step, alive.size - 1)]]
        rank[take] = removed + np.arange(take.size)
        removed += take.size
        error += sum(max(r.remove(take), 0.0) for r in readers)
        curve.append((removed / channels, error))
        alive = np.setdiff1d(alive, take)
    costs = sum(r.costs(alive) for r in readers)
    rank[alive[np.argsort(costs, kind="stable")]] = removed + np.arange(alive.size)
    return rank, curve


@dataclass
class GreedyChoice:
    """What the greedy pass finds per group it scores: the removal order (the criterion's scores) and the
    error curve along it (`removal_order`), a closed-form table of what reconstruction cannot recover."""

    scores: dict[str, np.ndarray]
    curves: dict[str, list[tuple[float, float]]]


def greedy_scores(model: Model, groups: list[Group], batches: Batches, providers: list[str] | None = None,
                  budget: int = 1 << 29, seed: int = 0, progress: Callable[[Progress], None] | None = None,
                  targets: KeptTargets | None = None) -> GreedyChoice:
    """Per group that a layer with a matrix view reads: per-channel scores (the greedy removal order;
    higher goes later) and the error curve; the other groups are not in the result. With `targets`, every
    layer read keeps its reconstruction target there on the way (the caller closes them)."""
    reading = readers_of(groups)
    views = reading_views(model, set(reading))
    last_reader = {g.id: view.weight.name for _, view in views for g, _ in reading[view.weight.name]}
    pending: dict[str, list[_Reader]] = {}
    choice = GreedyChoice({}, {})
    for view, gram in input_grams(model, batches, views, providers, budget, seed, progress, targets=targets):
        inverse, weights, energy = None, weights_with_bias(view)[0], 0.0
        if gram is not None:
            energy = float(np.einsum("fo,fo->", weights, gram @ weights.astype(gram.dtype)))
            inverse = regularized_inverse(gram, len(gram) - 1) if energy > 0 else None
            del gram
        for group, member in reading[view.weight.name]:
            if inverse is not None:
                reader = _reader(inverse, weights, energy, group_features(view, member), group.channels,
                                 sole=len(reading[view.weight.name]) == 1)
                if reader is not None:
                    pending.setdefault(group.id, []).append(reader)
            if last_reader[group.id] == view.weight.name and pending.get(group.id):
                choice.scores[group.id], choice.curves[group.id] = removal_order(pending.pop(group.id), group.channels)
                release_memory()  # its readers' matrices (`process`)
        del inverse
    return choice
