"""Each group's readers re-solved on their own, for `analyze --reconstruct`: the sensitivity of a group
when the layers reading it will be re-solved (as `prune --data` does), measured by running the model.

With one group's channels removed and nothing else changed, a reader's input is the unpruned input with
those channels zeroed, and its least-squares weights on the calibration rows have the closed form of
Optimal Brain Surgeon: W' = W - H[:, R] (H_RR)^-1 W_R, with H the inverse of the regularized A'A (A: the
reader's sampled feature rows, with a column of ones where the layer has an intercept) and R the removed
features. One pass over the unpruned model gives each reader's H; every (group, ratio) is then a small
update, no forward pass: the forward passes are the analysis' own evaluations of the entries.

This is what `reconstruct` computes for a plan that removes one group (its ridge is the fixed
`STABLE_RIDGE` rather than one chosen on held-out samples), so the table measures what the reconstructed
model will compute at each entry. Layers read through a grouped conv are not re-solved (as in `greedy`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune.graph.model import Model
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.surgery import sparse_values, zeroed_slices
from onnxprune.recover.grams import (
    group_features,
    input_grams,
    readers_of,
    reading_views,
    weights_with_bias,
)
from onnxprune.recover.greedy import regularized_inverse, symmetric_inverse
from onnxprune.recover.staged import Batches
from onnxprune.rules import LinearView

Removals = dict[str, dict[str, np.ndarray]]  # group id -> entry key (a ratio) -> group channels removed
Resolved = dict[tuple[str, str], dict[str, np.ndarray]]  # (group id, key) -> new values of reader weights


def resolved_readers(model: Model, groups: list[Group], removals: Removals, batches: Batches,
                     providers: list[str] | None = None, budget: int = 1 << 29, seed: int = 0,
                     progress: Callable[[Progress], None] | None = None) -> Resolved:
    """For each (group, key) of `removals`: the re-solved weights (and intercepts) of the layers reading
    the group, as new values by tensor name. Rows of removed features keep their values (they multiply
    zeros), and a QDQ weight's values stay on its grid, as in `reconstruct`."""
    readers = readers_of([g for g in groups if g.id in removals])
    resolved: Resolved = {}
    views = reading_views(model, set(readers))
    for view, gram in input_grams(model, batches, views, providers, budget, seed, progress, "re-solve readers"):
        if gram is None:
            continue
        n = view.features + (view.intercept is not None)  # the column of ones (last) only with an intercept
        inverse = regularized_inverse(gram[:n, :n], view.features)
        del gram
        if inverse is None:
            continue
        full = weights_with_bias(view)[0][:n]
        for group, member in readers[view.weight.name]:
            channel = group_features(view, member)[:n]
            for key, gone in removals[group.id].items():
                removed = np.flatnonzero(np.isin(channel, gone) & (channel >= 0))
                if removed.size:
                    values = _values(view, _obs_update(inverse, full, removed))
                    resolved.setdefault((group.id, key), {}).update(
                        {name: model.representable(name, array) for name, array in values.items()})
    return resolved


def _obs_update(inverse: np.ndarray, full: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """W - H[:, R] (H_RR)^-1 W_R, with the rows R kept as they were."""
    step = symmetric_inverse(inverse[np.ix_(removed, removed)].astype(np.float64)) @ full[removed]
    new = full - inverse[:, removed].astype(np.float64) @ step
    new[removed] = full[removed]
    return new


def _values(view: LinearView, full: np.ndarray) -> dict[str, np.ndarray]:
    """The layer's weight (and intercept) tensors holding `full` ([features (+1 bias), outputs]), read
    back through the view without leaving them in the model."""
    with view.restoring():
        view.set_matrix(full[None, :view.features])
        values = {view.weight.name: view.weight.values}
        if view.intercept is not None:
            view.set_bias(full[view.features])
            values[view.intercept.name] = view.intercept.values
    return values


def entry_values(model: Model, groups: list[Group], plan: Plan, resolved: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The weights a sparse model with re-solved readers changes: the plan's zeroed slices, and the
    readers' new values (zeroed where the plan zeroes them too: a layer reading and producing the group)."""
    values = sparse_values(model, groups, plan)
    values.update({name: np.array(array, copy=True) for name, array in resolved.items()})
    for weight, where in zeroed_slices(model, groups, plan):
        if weight.name in resolved:
            values[weight.name][where] = 0
    return values
