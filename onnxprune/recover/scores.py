"""Data-aware channel choice: what each input channel of each layer carries on the calibration data.

A channel matters to a consumer layer by how much it moves that layer's output: the energy of its
weight column times the mean square of the channel's activation, ||W[:, c]||^2 * E[x_c^2] (the
first-order term ThiNet and He et al. minimize). Magnitude criteria see only the first factor; a channel
with big weights that is almost always zero on real inputs (dead after a ReLU, a background detector)
costs nothing to remove, and the data says so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune.graph.model import Model
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group
from onnxprune.pruning.importance import Criterion, activation_weighted, ranked
from onnxprune.recover.grams import layer_sums, readers_of, reading_views
from onnxprune.recover.greedy import GreedyChoice, greedy_scores
from onnxprune.recover.staged import Batches
from onnxprune.recover.targets import KeptTargets
from onnxprune.rules import LinearView


def output_energy(view: LinearView, mean_square: np.ndarray) -> np.ndarray:
    """Per weight input index (axis `view.weight_axes[0]`): the output energy its column carries."""
    matrix = view.matrix()  # [groups, features, out per group]
    per_feature = (matrix**2).sum(axis=2)  # [groups, features]
    per_group = view.in_channels // view.groups
    column = per_feature.reshape(view.groups, per_group, view.kernel_size).sum(axis=2)  # [groups, channels]
    energy = column * mean_square.reshape(view.groups, per_group)
    return energy.sum(axis=0)


def channel_energies(model: Model, batches: Batches, weights: set[str], providers: list[str] | None = None,
                     budget: int = 1 << 29, progress: Callable[[Progress], None] | None = None) -> dict[str, np.ndarray]:
    """For the layers with a matrix view whose weight is in `weights` (those reading prunable channels):
    weight name -> output energy per weight input index, on `batches`."""
    energies: dict[str, np.ndarray] = {}
    views = reading_views(model, weights)
    for view, sums in layer_sums(model, batches, views, lambda _, view: ChannelSquares(view),
                                 lambda view: 8 * view.in_channels, providers, budget, progress):
        mean_square = sums.total / max(sums.count, 1)
        energies[view.weight.name] = energies.get(view.weight.name, 0) + output_energy(view, mean_square)
    return energies


class ChannelSquares:
    """Per input channel of a layer: the sum of squares of its activation, and how many values."""

    def __init__(self, view: LinearView):
        self.axis = view.in_axis
        self.total, self.count = np.zeros(view.in_channels), 0

    def add(self, x: np.ndarray) -> None:
        others = tuple(a for a in range(x.ndim) if a != self.axis % x.ndim)
        self.total += np.square(x, dtype=np.float32).sum(axis=others, dtype=np.float64)
        self.count += x.size // len(self.total)


def data_criterion(name: str, model: Model, groups: list[Group], batches: Batches,
                   providers: list[str] | None = None, budget: int = 1 << 29,
                   progress: Callable[[Progress], None] | None = None,
                   targets: KeptTargets | None = None) -> tuple[Criterion, GreedyChoice | None]:
    """The data-aware criterion `name` (one of importance.DATA_CRITERIA) for `groups`, from `batches`:
    "act" weighs each consumer column by its channel's activation energy; "greedy" ranks channels by
    the order of a reconstruction-aware greedy removal (`recover.greedy`), whose pass is returned too
    (its error curves are what `allocation` sets ratios by; it keeps reconstruction's targets in `targets`)."""
    if name == "greedy":
        choice = greedy_scores(model, groups, batches, providers, budget, progress=progress, targets=targets)
        return ranked(choice.scores), choice
    energies = channel_energies(model, batches, set(readers_of(groups)), providers, budget, progress)
    return activation_weighted(energies), None
