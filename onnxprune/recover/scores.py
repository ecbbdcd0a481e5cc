"""What each input channel of each layer carries on the data, for data-aware channel choice.

A channel matters to a consumer layer by how much it moves that layer's output: the energy of its
weight column times the mean square of the channel's activation, ||W[:, c]||^2 * E[x_c^2] (the
first-order term ThiNet and He et al. minimize). Magnitude criteria see only the first factor; a channel
with big weights that is almost always zero on real inputs (dead after a ReLU, a background detector)
costs nothing to remove, and the data says so.
"""

from __future__ import annotations

import numpy as np

from onnxprune.io import Model
from onnxprune.recover.staged import Batches, StagedRun
from onnxprune.rules import LinearView, linear_view


def output_energy(view: LinearView, mean_square: np.ndarray) -> np.ndarray:
    """Per weight input index (axis `view.weight_axes[0]`): the output energy its column carries."""
    matrix = view.matrix()  # [groups, features, out per group]
    per_feature = (matrix**2).sum(axis=2)  # [groups, features]
    per_group = view.in_channels // view.groups
    column = per_feature.reshape(view.groups, per_group, view.kernel_size).sum(axis=2)  # [groups, channels]
    energy = column * mean_square.reshape(view.groups, per_group)
    return energy.sum(axis=0)


def channel_energies(model: Model, batches: Batches, weights: set[str], providers: list[str] | None = None,
                     budget: int = 1 << 29) -> dict[str, np.ndarray]:
    """For the layers with a matrix view whose weight is in `weights` (those reading prunable channels):
    weight name -> output energy per weight input index, on `batches`."""
    views = [(i, v) for i, n in enumerate(model.graph.nodes)
             if len(n.inputs) > 1 and (v := linear_view(n)) is not None and v.weight.name in weights]
    if not views:
        return {}
    run = StagedRun(model, batches, budget, providers)
    energies: dict[str, np.ndarray] = {}
    try:
        for position, view in views:
            run.advance(position)
            total, count = np.zeros(view.in_channels), 0
            for b in range(run.batches):
                x = run.value(view.input.name, b)
                others = tuple(a for a in range(x.ndim) if a != view.in_axis % x.ndim)
                total += np.square(x, dtype=np.float32).sum(axis=others, dtype=np.float64)
                count += x.size // view.in_channels
            mean_square = total / max(count, 1)
            energies[view.weight.name] = energies.get(view.weight.name, 0) + output_energy(view, mean_square)
    finally:
        run.close()
    return energies
