"""What the calibration data looks like at the input of each layer with a matrix view, in one pass.

Data-aware channel choice (`scores`, `greedy`, whose error curves `allocation` reads) reads the
*unpruned* model's activations at the layers that read prunable groups: either per-channel energies or
the Gram matrix G = A'A of sampled feature rows (A with a column of ones last, for the intercept).
`layer_sums` walks the model once with `StagedRun` and feeds each layer's input to the caller's sums
batch by batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from functools import partial
from typing import Protocol, TypeVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group, Member
from onnxprune.recover.lstsq import SINGLE, PendingRows, add_gram, mirror, sample_rows
from onnxprune.recover.staged import Batches, StagedRun, sample_count, windows
from onnxprune.recover.targets import KeptTargets, Target
from onnxprune.rules import IN, LinearView, linear_view


def readers_of(groups: list[Group]) -> dict[str, list[tuple[Group, Member]]]:
    """Weight name -> (group, member) for every group channel axis a layer reads through that weight."""
    readers: dict[str, list[tuple[Group, Member]]] = {}
    for group in groups:
        for member in group.weights():
            if member.role == IN:
                readers.setdefault(member.tensor, []).append((group, member))
    return readers


def reading_views(model: Model, weights: set[str]) -> list[tuple[int, LinearView]]:
    """(position, view) in graph order of the layers with a matrix view whose weight is in `weights`."""
    return [(i, v) for i, n in enumerate(model.graph.nodes)
            if len(n.inputs) > 1 and (v := linear_view(n)) is not None and v.weight.name in weights]


class Sums(Protocol):
    """What a caller sums over a layer's input, batch by batch."""

    def add(self, x: np.ndarray) -> None: ...


S = TypeVar("S", bound=Sums)


def layer_sums(model: Model, batches: Batches, views: list[tuple[int, LinearView]],
               start: Callable[[int, LinearView], S | None], size: Callable[[LinearView], int],
               providers: list[str] | None = None, budget: int = 1 << 29,
               progress: Callable[[Progress], None] | None = None, stage: str = "choose channels",
               weights: dict[str, np.ndarray] | None = None) -> Iterator[tuple[LinearView, S | None]]:
    """For each (position, view) in order: the view and `start(position, view)` fed every batch of the
    view's input (None: nothing to sum for it). The weights this run reads do not change while it runs,
    so views are taken in windows whose sums (`size` bytes each, with their nodes' weights) add up to half
    of `budget`: one run of the nodes up to a window's last view per batch, and only the tensors crossing
    a window's end are kept (in memory up to the other half of `budget`, on disk beyond).
    `progress` hears of each window as `stage` (the caller's work on its layers counts in its time);
    `weights` are values the run reads instead of the model's (`StagedRun`). The inputs are taken from
    `batches` now: the caller may empty the list before reading the first view."""
    per_batch = len(next(iter(batches[0].values()))) if batches else 0
    spans = _stage_bytes(model, views, per_batch)
    return _windowed_sums(StagedRun(model, batches, budget // 2, providers, weights), views, start,
                          lambda item: size(item[1]) + spans[item[0]], budget // 2, progress, stage)


def _stage_bytes(model: Model, views: list[tuple[int, LinearView]], per_batch: int) -> dict[int, int]:
    """Per view position, what else its place in a window costs in memory: a batch of its input (the
    window's run hands over every view's input of a batch at once), and the weights of the nodes from
    the view before it (a window's session holds them several times while it is built: the graph, its
    serialized form, onnxruntime's copy and prepacked forms). Sizes at the shapes the model was loaded with."""
    nodes = model.graph.nodes
    spans, begin = {}, 0
    for position, view in views:
        constants = {t.name: t for n in nodes[begin:position] for t in n.inputs if isinstance(t, gs.Constant)}
        activation = 4 * per_batch * math.prod(model.shapes.get(view.input.name, (0,)))
        spans[position] = activation + sum(t.values.nbytes for t in constants.values())
        begin = position
    return spans


def _windowed_sums(run: StagedRun, views: list[tuple[int, LinearView]], start: Callable[[int, LinearView], S | None],
                   size: Callable[[tuple[int, LinearView]], int], budget: int,
                   progress: Callable[[Progress], None] | None, stage: str) -> Iterator[tuple[LinearView, S | None]]:
    begin, done = time.monotonic(), 0
    try:
        for window in windows(views, size, budget):
            if progress is not None:
                progress(Progress(done, len(views), done, time.monotonic() - begin, stage))
            sums = [start(position, view) for position, view in window]
            watched = [(view.input.name, s) for (_, view), s in zip(window, sums) if s is not None]
            run.advance(window[-1][0], [name for name, _ in watched], partial(_feed, watched))
            del watched
            for _, view in window:  # each freed as soon as the caller lets go of it
                yield view, sums.pop(0)
            done += len(window)
        if progress is not None:
            progress(Progress(len(views), len(views), len(views), time.monotonic() - begin, stage))
    finally:
        run.close()


def _feed(watched: list[tuple[str, Sums]], batch: int, values: dict[str, np.ndarray]) -> None:
    for name, sums in watched:
        sums.add(values[name])


class InputGram:
    """[groups, features + 1, features + 1]: A'A over sampled feature rows of a layer's input, the last
    column of A all ones (summed in float32 above `SINGLE` features, as in reconstruction). Rows are
    summed in updates of at least half the features' count (`PendingRows`); read `result()` at the end."""

    def __init__(self, view: LinearView, samples: int, rng: np.random.Generator):
        self.view, self.samples, self.rng = view, samples, rng
        f = view.features + 1
        self.gram = np.zeros((view.groups, f, f), self.dtype(view))
        self.pending = PendingRows(f // 2)

    @staticmethod
    def dtype(view: LinearView) -> type:
        return np.float64 if view.features <= SINGLE else np.float32

    @staticmethod
    def size(view: LinearView) -> int:
        """Bytes of the sums and of the rows held back for an update."""
        f = view.features + 1
        return view.groups * (f * f + f * f // 2) * np.dtype(InputGram.dtype(view)).itemsize

    def add(self, x: np.ndarray) -> None:
        who, where = sample_rows(self.view, x, self.samples, self.rng)
        self.add_rows(self.view.rows(x, who, where, self.gram.dtype))

    def add_rows(self, rows: np.ndarray) -> None:
        """Add feature rows [groups, R, features] drawn as `add` would draw them."""
        if (ready := self.pending.add(rows.astype(self.gram.dtype, copy=False))) is not None:
            self._update(ready[0])

    def result(self) -> np.ndarray:
        if (rows := self.pending.take()) is not None:
            self._update(rows[0])
        return mirror(self.gram)

    def _update(self, a: np.ndarray) -> None:
        add_gram(self.gram, np.concatenate([a, np.ones(a.shape[:2] + (1,), a.dtype)], axis=2))


def input_grams(model: Model, batches: Batches, views: list[tuple[int, LinearView]], providers: list[str] | None = None,
                budget: int = 1 << 29, seed: int = 0, progress: Callable[[Progress], None] | None = None,
                stage: str = "choose channels", targets: KeptTargets | None = None) \
        -> Iterator[tuple[LinearView, np.ndarray | None]]:
    """For each (position, view) in order: the view and A'A of its input rows ([features + 1] square, the
    column of ones last), or None for a grouped conv (its removed inputs take their outputs with them: the
    greedy choice and the re-solved readers leave it out). Rows are drawn by a generator seeded with
    (`seed`, position), so the same layer gets the same rows whatever else is read with it. With
    `targets`, every layer's reconstruction target is kept there on the way (the same rows)."""
    samples = sample_count(batches)

    def start(position: int, view: LinearView) -> _GramAndTarget | None:
        gram = InputGram(view, samples, np.random.default_rng([seed, position])) if view.groups == 1 else None
        target = None if targets is None else targets.start(position, view, samples, seed)
        return None if gram is None and target is None else _GramAndTarget(gram, target)

    def size(view: LinearView) -> int:
        weights = 0 if targets is None else 4 * view.features * view.out_channels  # the target's float32 copy
        return (InputGram.size(view) if view.groups == 1 else 0) + weights

    for view, sums in layer_sums(model, batches, views, start, size, providers, budget, progress, stage):
        if sums is not None and sums.target is not None:
            sums.target.seal()
        grams = [None if sums is None or sums.gram is None else sums.gram.result()[0]]
        del sums
        yield view, grams.pop()  # this frame keeps no reference: the caller may overwrite A'A and drop it


class _GramAndTarget:
    """A layer's `InputGram` (None for a grouped conv) and its reconstruction `Target` (None when not
    kept), fed the same batches. Their generators are seeded alike, so they draw the same rows: with
    both, the rows are gathered once (in float32, the target's type; exact in the gram's float64)."""

    def __init__(self, gram: InputGram | None, target: Target | None):
        self.gram, self.target = gram, target

    def add(self, x: np.ndarray) -> None:
        if self.gram is None or self.target is None:
            (self.gram or self.target).add(x)
            return
        who, where = sample_rows(self.target.view, x, self.target.samples, self.target.rng)
        rows = self.target.view.rows(x, who, where, np.float32)
        self.target.add_rows(who, where, rows)
        self.gram.add_rows(rows)


def weights_with_bias(view: LinearView) -> np.ndarray:
    """[groups, features + 1, outputs per group]: the layer's matrix with its bias as the last row."""
    return np.concatenate([view.matrix(), view.bias().reshape(view.groups, 1, -1)], axis=1)


def group_features(view: LinearView, member: Member) -> np.ndarray:
    """Group channel of every feature of one block of the layer, the column of ones last; -1 where the
    feature is not the group's (and for the ones, never removed)."""
    channel_of_index = np.full(view.in_channels // view.groups, -1, dtype=np.int64)
    channel_of_index[member.index] = member.channel
    return np.append(channel_of_index[view.feature_channel()], -1)
