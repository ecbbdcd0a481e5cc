"""What the calibration data looks like at the input of each layer with a matrix view, in one pass.

Data-aware channel choice (`scores`, `greedy`, whose error curves `allocation` reads) reads the
*unpruned* model's activations at the layers that read prunable groups: either per-channel energies or
the Gram matrix G = A'A of sampled feature rows (A with a column of ones last, for the intercept).
`layer_inputs` walks the model once with `StagedRun` and hands each layer its input batch by batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import numpy as np

from onnxprune.graph.model import Model
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group, Member
from onnxprune.recover.lstsq import SINGLE, sample_rows
from onnxprune.recover.staged import Batches, StagedRun
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


def layer_inputs(model: Model, batches: Batches, views: list[tuple[int, LinearView]], providers: list[str] | None = None,
                 budget: int = 1 << 29, progress: Callable[[Progress], None] | None = None,
                 stage: str = "choose channels") -> Iterator[tuple[LinearView, Iterator[np.ndarray]]]:
    """For each view in order: the view and its input activation, batch by batch (read it before the next).
    `progress` hears of each layer as `stage` (the caller's work on a layer counts in its time)."""
    run = StagedRun(model, batches, budget, providers)
    start = time.monotonic()
    try:
        for k, (position, view) in enumerate(views):
            if progress is not None:
                progress(Progress(k, len(views), k, time.monotonic() - start, stage))
            run.advance(position)
            yield view, (run.value(view.input.name, b) for b in range(run.batches))
        if progress is not None:
            progress(Progress(len(views), len(views), len(views), time.monotonic() - start, stage))
    finally:
        run.close()


def input_gram(view: LinearView, inputs: Iterator[np.ndarray], samples: int, rng: np.random.Generator) -> np.ndarray:
    """[groups, features + 1, features + 1]: A'A over sampled feature rows, the last column of A all ones
    (summed in float32 above `SINGLE` features, as in reconstruction)."""
    f = view.features + 1
    dtype = np.float64 if view.features <= SINGLE else np.float32
    gram = np.zeros((view.groups, f, f), dtype)
    for x in inputs:
        who, where = sample_rows(view, x, samples, rng)
        a = view.rows(x, who, where, dtype)
        a = np.concatenate([a, np.ones(a.shape[:2] + (1,), dtype)], axis=2)
        gram += a.transpose(0, 2, 1) @ a
    return gram


def weights_with_bias(view: LinearView) -> np.ndarray:
    """[groups, features + 1, outputs per group]: the layer's matrix with its bias as the last row."""
    return np.concatenate([view.matrix(), view.bias().reshape(view.groups, 1, -1)], axis=1)


def group_features(view: LinearView, member: Member) -> np.ndarray:
    """Group channel of every feature of one block of the layer, the column of ones last; -1 where the
    feature is not the group's (and for the ones, never removed)."""
    channel_of_index = np.full(view.in_channels // view.groups, -1, dtype=np.int64)
    channel_of_index[member.index] = member.channel
    return np.append(channel_of_index[view.feature_channel()], -1)
