"""Least-squares reconstruction: re-solve the layers that read removed channels, from calibration data.

After channels are removed, each *consumer* layer (Conv, Gemm, MatMul with a weight; see
`rules.linear`) sees fewer inputs. Its kept weights and its bias are re-solved so that, on the
calibration data, its output matches what the unpruned model computes at the same place:

    min_M,b  || A_sparse @ M + b - Y_unpruned ||^2 + ridge * mean(diag(A'A)) * ||M||^2

Layers are solved one at a time in graph order, and each sees the inputs the pruned model computes
*with the layers before it already re-solved* (He et al. 2017; ThiNet), so errors do not pile up.
`StagedRun` makes that two forward passes instead of two per layer: the pruned run stops before every
layer it re-solves; the unpruned run goes ahead of it in windows of layers (`grams.layer_sums`), keeping
each layer's sampled rows and its unpruned output there (`targets`) until the pruned run reads them.
The ridge is the one of `RIDGES` with the least error on every `HELD_OUT`-th sample (fitted on the
others), and an output keeps its new weights only if they lower its error on those held-out samples.

The result is still a sparse model: the original graph with the removed channels' producer slices
zeroed; only the consumers' kept weights and their biases have other values. Columns of removed inputs
keep their values (they multiply exact zeros, or a constant that slim pruning folds into the bias), so
slim == sparse holds as before. Where a layer has no bias, an offset goes into the mean of a
BatchNormalization that alone reads it, or into the constant added right after a MatMul; otherwise the
layer is solved without one.

Rows are sampled as `lstsq.sample_rows` says (the same ones for the pruned and the unpruned activations).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.process import release_memory
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.surgery import removed_slices, zeroed_slices
from onnxprune.recover.edits import SparseEdits
from onnxprune.recover.grams import layer_sums
from onnxprune.recover.lstsq import SINGLE, PendingRows, add_gram, mirror, ridge_solve
from onnxprune.recover.staged import Batches, StagedRun, sample_count
from onnxprune.recover.targets import KeptTargets, Target
from onnxprune.rules import IN, LinearView, linear_view

RIDGES = (1e-6, 1e-4, 1e-2)  # relative to the mean feature energy; chosen on held-out samples
HELD_OUT = 4  # every 4th calibration sample is held out to choose the ridge and to check each output
MAX_FEATURES = 6144  # bigger layers (A'A over 150 MB) get their bias compensated only


@dataclass
class LayerFit:
    """What reconstruction did to one layer, with its relative output error on the calibration data."""

    node: str
    how: str  # "solved", "bias only" or "left as is"
    error_before: float
    error_after: float
    note: str = ""


@dataclass
class Reconstruction:
    """What `reconstruct` did: one `LayerFit` per layer reading removed channels."""

    layers: list[LayerFit] = field(default_factory=list)
    samples: int = 0
    changed: set[str] = field(default_factory=set)  # weights whose values it changed (zeroed or re-solved)

    def summary(self) -> str:
        if not self.layers:
            return "reconstruction: no layer reads removed channels"
        counts = {how: sum(f.how == how for f in self.layers) for how in ("solved", "bias only", "left as is")}
        text = f"reconstruction on {self.samples} samples: " + ", ".join(f"{n} {how}" for how, n in counts.items() if n)
        solved = [f for f in self.layers if f.how != "left as is"]
        if solved:
            before = float(np.mean([f.error_before for f in solved]))
            after = float(np.mean([f.error_after for f in solved]))
            text += f"; mean relative output error of those re-solved {before:.3f} -> {after:.3f}"
        left = [f"{f.node} ({f.note})" for f in self.layers if f.how == "left as is"]
        if left:
            text += "; left as is: " + ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
        return text


@dataclass
class _Layer:
    """A consumer layer: its view, which input features and outputs are removed."""

    view: LinearView
    position: int
    removed_features: np.ndarray  # bool per feature of a group
    kept_outputs: np.ndarray  # output channel indices that stay


@dataclass
class _Stats:
    """Sums over rows, per group, of the unknowns' columns U of A (A with a column of ones last): U'U,
    U'T and T'T per output, T = Y - (the fixed columns' part of the output), and Y'Y per output."""

    gram: np.ndarray
    cross: np.ndarray
    energy: np.ndarray
    output: np.ndarray  # Y'Y per output: what relative errors are relative to
    rows: int = 0


def _changed_tensors(model: Model, zeroed: set[str]) -> set[str]:
    """Activations that pruning changes: outputs of layers with zeroed weights, and all they reach."""
    changed: set[str] = set()
    for node in model.graph.nodes:
        if any(t.name in changed or (isinstance(t, gs.Constant) and t.name in zeroed) for t in node.inputs):
            changed.update(o.name for o in node.outputs)
    return changed


def consumer_layers(model: Model, groups: list[Group], plan: Plan, scope: str = "consumers") -> tuple[list[_Layer], list[str]]:
    """The layers to re-solve in graph order — those that read removed channels, or with scope "downstream"
    every layer whose input pruning changes — and the names of layers that read removed channels but
    cannot be viewed as a matrix product (they are left as they are)."""
    removed: dict[tuple[str, int], np.ndarray] = {}
    reading: set[str] = set()  # weights that read removed channels
    for member, index in removed_slices(groups, plan):
        key = (member.tensor, member.axis)
        removed[key] = np.union1d(removed.get(key, np.zeros(0, np.int64)), index)
        if member.role == IN:
            reading.add(member.tensor)
    changed = _changed_tensors(model, {w.name for w, _ in zeroed_slices(model, groups, plan)}) \
        if scope == "downstream" else set()
    layers, unsupported = [], []
    for position, node in enumerate(model.graph.nodes):
        if len(node.inputs) < 2:
            continue
        view = linear_view(node)
        if view is None:
            if any(isinstance(t, gs.Constant) and t.name in reading for t in node.inputs):
                unsupported.append(node.name)
            continue
        ndim = view.weight.values.ndim
        in_axis, out_axis = view.weight_axes
        gone_in = removed.get((view.weight.name, in_axis % ndim), np.zeros(0, np.int64))
        if gone_in.size == 0 and view.input.name not in changed:
            continue
        per_group_channel = np.zeros(view.in_channels // view.groups, dtype=bool)
        per_group_channel[gone_in] = True
        gone_out = removed.get((view.weight.name, out_axis % ndim), np.zeros(0, np.int64))
        kept = np.setdiff1d(np.arange(view.out_channels), gone_out)
        layers.append(_Layer(view, position, per_group_channel[view.feature_channel()], kept))
    return layers, unsupported


def reconstruct(model: Model, groups: list[Group], plan: Plan, batches: Batches, providers: list[str] | None = None,
                budget: int = 1 << 29, progress: Callable[[Progress], None] | None = None,
                seed: int = 0, scope: str = "consumers", targets: KeptTargets | None = None) -> Reconstruction:
    """Zero the plan's channels in `model` (in place) and re-solve the layers that read them (with scope
    "downstream": every layer whose input pruning changes).

    `batches` are the calibration inputs (dicts of input name -> array); the list is emptied when the
    model runs, so that the inputs are freed as soon as both runs are past the nodes reading them (the
    calibration data can be bigger than the model). Activations crossing a stage are kept in memory up
    to `budget` bytes per run (two runs: pruned and unpruned), on disk beyond; the unpruned run's targets
    and activations share its `budget`. `targets` kept by the greedy pass (same `seed`) replace the
    unpruned run when they cover every layer to re-solve.
    """
    layers, unsupported = consumer_layers(model, groups, plan, scope)
    result = Reconstruction(samples=sample_count(batches))
    result.layers += [LayerFit(name, "left as is", math.nan, math.nan, "no matrix view of this layer")
                      for name in unsupported]
    edits = SparseEdits(model, groups, plan)
    result.changed.update(edits.zeros)
    if not layers:
        edits.zero(0, len(model.graph.nodes))
        return result

    def target(position: int, view: LinearView) -> Target:
        return Target(view, result.samples, np.random.default_rng([seed, position]), edits.originals)

    reference = None  # the unpruned run, when the greedy pass has not kept the targets
    if targets is not None and all(layer.position in targets.by_position for layer in layers):
        goals = (targets.by_position[layer.position] for layer in layers)
    else:
        reference = layer_sums(model, batches, [(layer.position, layer.view) for layer in layers], target,
                               Target.size, providers, budget, weights=edits.originals)
        goals = (goal for _, goal in reference)
    pruned = StagedRun(model, batches, budget, providers)
    batches.clear()  # the runs hold the inputs until they pass their readers
    start = time.monotonic()
    try:
        for k, (layer, goal) in enumerate(zip(layers, goals)):
            if progress is not None:
                progress(Progress(k, len(layers), k, time.monotonic() - start, "reconstruct"))
            # the unpruned run has passed this layer (reading the weights before any edit at or after it)
            stage = pruned.position
            edits.forget(layer.position)
            edits.zero(stage, layer.position)
            pruned.advance(layer.position)
            edits.keep_original(layer.view.weight, layer.view.intercept)
            result.layers.append(_solve(layer, *_collect(layer, goal, pruned)))
            release_memory()  # the layer's sums and rows (`process`)
            for tensor in (layer.view.weight, layer.view.intercept):
                if tensor is not None:
                    tensor.values = model.representable(tensor.name, tensor.values)
                    result.changed.add(tensor.name)
        edits.zero(pruned.position, len(model.graph.nodes))
        if progress is not None:
            progress(Progress(len(layers), len(layers), len(layers), time.monotonic() - start, "reconstruct"))
    finally:
        if reference is not None:
            reference.close()  # its run's temporary files
        pruned.close()
    return result


def _unknowns(layer: _Layer) -> tuple[np.ndarray, int, str]:
    """The rows of [M; b] that are re-solved (kept features, then the column of ones if the layer has an
    intercept), how many of them get the ridge (the features), and how the layer is treated: "solved",
    "bias only" (more than `MAX_FEATURES` features) or "left as is" (that, and no intercept)."""
    view = layer.view
    f = view.features
    how = "solved" if f <= MAX_FEATURES else "bias only"
    unknown = np.flatnonzero(~layer.removed_features) if how == "solved" else np.zeros(0, np.int64)
    regularized = unknown.size
    if view.intercept is not None:
        unknown = np.append(unknown, f)
    elif how == "bias only":
        how = "left as is"
    return unknown, regularized, how


def _collect(layer: _Layer, target: Target, pruned: StagedRun) -> tuple[_Stats, _Stats]:
    """Sums over the sampled rows of this layer's input (pruned run) and target output (unpruned run),
    split by sample: every `HELD_OUT`-th sample goes to the held-out sums, the rest to the fitting sums.

    The rows of [M; b] that are not re-solved (removed features) keep their values, so their part of the
    output is subtracted from the target here and the sums cover the unknowns only: for a 30% pruned
    layer half the size and the flops of A'A over every feature.
    """
    view = layer.view
    f = view.features
    groups, out_per_group = view.groups, view.out_channels // view.groups
    unknown = _unknowns(layer)[0]
    fixed = np.setdiff1d(np.arange(f + 1), unknown)
    dtype = np.float64 if view.features <= SINGLE else np.float32
    current = np.concatenate([view.matrix(), view.bias().reshape(groups, 1, out_per_group)], axis=1)
    known = current[:, fixed].astype(dtype)  # [groups, fixed, outputs]: the values the fixed rows keep
    u = unknown.size
    folds = [_Stats(np.zeros((groups, u, u), dtype), np.zeros((groups, u, out_per_group), dtype),
                    np.zeros(view.out_channels), np.zeros(view.out_channels)) for _ in range(2)]
    pending = [PendingRows(u // 2) for _ in folds]
    offset = 0
    for b in range(pruned.batches):
        x = pruned.value(view.input.name, b)
        who, where, y0 = target.batch(b)
        held = (offset + who) % HELD_OUT == HELD_OUT - 1
        offset += len(x)
        for stats, waiting, rows in zip(folds, pending, (~held, held)):
            if rows.any():
                a, goal = _rows(stats, view.rows(x, who[rows], where[rows], dtype), y0[:, rows].astype(dtype),
                                unknown, fixed, known)
                if (joined := waiting.add(a, goal)) is not None:
                    _add_products(stats, *joined)
    for stats, waiting in zip(folds, pending):
        if (joined := waiting.take()) is not None:
            _add_products(stats, *joined)
        mirror(stats.gram)
    return folds[0], folds[1]


def _rows(stats: _Stats, a: np.ndarray, y0: np.ndarray, unknown: np.ndarray, fixed: np.ndarray,
          known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unknowns' columns of rows `a` [groups, R, features] of the pruned input (with the column of
    ones), and the target they fit: `y0` [groups, R, outputs] of the unpruned output less the fixed
    columns' part. Adds the rows' output and target energies to `stats`."""
    a = np.concatenate([a, np.ones(a.shape[:2] + (1,), a.dtype)], axis=2)
    target = y0
    if fixed.size:
        part = a[:, :, fixed]
        live = part.any(axis=(0, 1))  # removed inputs are mostly all zero: they add nothing
        if live.any():
            target = y0 - part[:, :, live] @ known[:, live]
    stats.output += (y0**2).sum(axis=1, dtype=np.float64).reshape(-1)
    stats.energy += (target**2).sum(axis=1, dtype=np.float64).reshape(-1)
    return a[:, :, unknown], target


def _add_products(stats: _Stats, a: np.ndarray, target: np.ndarray) -> None:
    """Add the rows' A'A and A'T to `stats` (`_rows`' result, joined over batches: `PendingRows`)."""
    add_gram(stats.gram, a)  # its lower triangle (`_collect` mirrors it at the end)
    stats.cross += a.transpose(0, 2, 1) @ target
    stats.rows += a.shape[1]


def _error(full: np.ndarray, gram: np.ndarray, cross: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Per output: || A [M; b] - Y ||^2 from the sums (`full` = [M; b], one column per output)."""
    full = full.astype(gram.dtype, copy=False)  # never upcast a float32 A'A (a copy of it)
    quadratic = (full * (gram @ full)).sum(axis=0, dtype=np.float64)
    return quadratic - 2 * (full * cross).sum(axis=0, dtype=np.float64) + energy


@dataclass
class _Problem:
    """One group's least squares over the unknown rows of [M; b] (`_unknowns`), for the outputs `outs`."""

    start: np.ndarray  # [unknowns, outputs]: their current values
    outs: np.ndarray  # local output indices within the group
    regularized: int  # the first `regularized` unknowns get the ridge (the intercept does not)

    def solve(self, gram: np.ndarray, cross: np.ndarray, ridge: float) -> np.ndarray:
        everything = np.arange(len(gram))
        return ridge_solve(gram, everything, cross[:, self.outs], ridge, self.regularized).astype(np.float64)

    def error(self, full: np.ndarray, stats: _Stats, g: int, first: int) -> np.ndarray:
        energy = stats.energy[first + self.outs]
        return _error(full, stats.gram[g], stats.cross[g][:, self.outs], energy)


def _solve(layer: _Layer, fit: _Stats, held: _Stats) -> LayerFit:
    """Solve each group; the ridge is the one of `RIDGES` with the least held-out error, and an output
    keeps its new weights only if they lower its held-out error (never worse on unseen samples)."""
    view = layer.view
    matrix, bias = view.matrix(), view.bias()
    f = view.features
    out_per_group = view.out_channels // view.groups
    unknown, regularized, how = _unknowns(layer)
    if how == "left as is":
        return LayerFit(view.node.name, how, math.nan, math.nan, f"{f} features and no bias to adjust")
    check = held if held.rows else fit
    new_matrix, new_bias = matrix.copy(), bias.copy()
    before = after = energy = 0.0
    chosen = []
    for g in range(view.groups):
        first = g * out_per_group
        outs = layer.kept_outputs[(layer.kept_outputs // out_per_group) == g] - first
        if outs.size == 0:
            continue
        full = np.concatenate([matrix[g], bias[None, first:first + out_per_group]], axis=0)[:, outs]
        problem = _Problem(full[unknown], outs, regularized)
        err0 = problem.error(problem.start, check, g, first)
        ridges = [r for r in RIDGES if fit.gram.dtype == np.float64 or r >= 1e-4]  # float32 needs a ridge
        trials = []
        for r in ridges if held.rows and regularized else ridges[:1]:
            errors = problem.error(problem.solve(fit.gram[g], fit.cross[g], r), check, g, first)
            trials.append((float(errors.sum()), r, errors))
        _, ridge, errors = min(trials, key=lambda t: t[0])
        chosen.append(ridge)
        better = errors < err0 if held.rows else np.ones(outs.size, dtype=bool)
        fit.gram[g] += held.gram[g]  # from here on `fit` holds all samples (no third copy of A'A)
        fit.cross[g] += held.cross[g]
        total = _Stats(fit.gram[g:g + 1], fit.cross[g:g + 1], fit.energy + held.energy, fit.output + held.output)
        solved = problem.solve(total.gram[0], total.cross[0], ridge)
        solved[:, ~better] = problem.start[:, ~better]
        full[unknown] = solved
        new_matrix[g][:, outs] = full[:-1]
        new_bias[first + outs] = full[-1]
        before += float(np.sum(np.maximum(problem.error(problem.start, total, 0, first), 0)))
        after += float(np.sum(np.maximum(problem.error(solved, total, 0, first), 0)))
        energy += float(np.sum(total.output[first + outs]))
        del total
    view.set_matrix(new_matrix)
    if view.intercept is not None:
        view.set_bias(new_bias)
    scale = max(energy, 1e-30)
    note = f"ridge {max(chosen, default=0):g}" if chosen else ""
    return LayerFit(view.node.name, how, math.sqrt(before / scale), math.sqrt(after / scale), note)
