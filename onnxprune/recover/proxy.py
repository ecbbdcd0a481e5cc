"""Sensitivity *after reconstruction*, in closed form: which groups can lose more channels when the layers
reading them will be re-solved.

Plain sensitivity analysis zeroes a group and re-runs the model; with reconstruction what matters is
what the re-solved layers *cannot* recover. For a layer y = A @ W reading the group, the least-squares
residual of predicting its output without the removed features R from the kept ones K is

    err(R) = tr(W_R' (G_RR - G_RK G_KK^-1 G_KR) W_R),   G = A'A over the calibration rows

(the Schur complement: what the removed features carry that the kept ones cannot explain). One pass over
the unpruned model collects G per layer; every (group, ratio) is then a small solve, no forward pass.
The table it makes — metric 1 - sqrt(err / output energy), summed over the layers reading the group —
is a `SensitivityTable` as `analyze`'s is, so `sensitivity.sensitivity_ratios` allocates by it unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnxprune.analysis.table import DEFAULT_RATIOS, SensitivityTable, ratio_key, sensitivity_ratios
from onnxprune.graph.model import Model
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Planner
from onnxprune.recover.grams import (
    group_features,
    input_gram,
    layer_inputs,
    readers_of,
    reading_views,
    weights_with_bias,
)
from onnxprune.recover.lstsq import STABLE_RIDGE, ridge_solve
from onnxprune.recover.staged import Batches

METRIC = "reconstruction fidelity (proxy)"


def _residual(gram: np.ndarray, full: np.ndarray, removed: np.ndarray) -> float:
    """tr(W_R' (G_RR - G_RK G_KK^-1 G_KR) W_R) for the features `removed` (bool), kept = the rest."""
    r, k = np.flatnonzero(removed), np.flatnonzero(~removed)
    if r.size == 0:
        return 0.0
    w_r = full[r]
    g_kr_w = gram[np.ix_(k, r)] @ w_r
    solved = ridge_solve(gram, k, g_kr_w, STABLE_RIDGE, k.size - 1)  # the last kept feature is the column of ones
    return float(np.einsum("ro,ro->", w_r, gram[np.ix_(r, r)] @ w_r) - np.einsum("ko,ko->", g_kr_w, solved))


def reconstruction_table(model: Model, groups: list[Group], removals: dict[str, dict[float, np.ndarray]],
                         batches: Batches, providers: list[str] | None = None, budget: int = 1 << 29,
                         seed: int = 0) -> SensitivityTable:
    """A sensitivity table (baseline 1, metric 1 - relative reconstruction error) for the groups in
    `removals` (group id -> ratio -> the group channels removed at that ratio). Groups that no layer with
    a matrix view reads are left out (nothing can be re-solved for them)."""
    by_id = {g.id: g for g in groups if g.id in removals}
    readers = readers_of(list(by_id.values()))
    errors = {gid: {r: 0.0 for r in removals[gid]} for gid in by_id}
    energy = dict.fromkeys(by_id, 0.0)
    rng = np.random.default_rng(seed)
    samples = sum(len(next(iter(b.values()))) for b in batches)
    for view, inputs in layer_inputs(model, batches, reading_views(model, set(readers)), providers, budget):
        gram = input_gram(view, inputs, samples, rng)
        full = weights_with_bias(view)
        layer_energy = float(sum(np.einsum("fo,fo->", full[g], gram[g] @ full[g]) for g in range(view.groups)))
        for group, member in readers[view.weight.name]:
            channel = group_features(view, member)
            energy[group.id] += layer_energy
            for ratio, gone in removals[group.id].items():
                removed = np.isin(channel, gone) & (channel >= 0)
                errors[group.id][ratio] += sum(_residual(gram[g], full[g], removed) for g in range(view.groups))
    table = {gid: {ratio_key(r): 1.0 - float(np.sqrt(max(e, 0.0) / energy[gid])) for r, e in row.items()}
             for gid, row in errors.items() if energy[gid] > 0}
    return SensitivityTable(METRIC, 1.0, table, {gid: by_id[gid].channels for gid in table})


def reconstruction_ratios(model: Model, candidates: list[Group], planner: Planner, batches: Batches,
                          providers: list[str] | None = None, budget: int = 1 << 29) -> Callable[[float], dict[str, float]]:
    """Per-group ratios for a knob (as `sensitivity.sensitivity_ratios`) from the closed-form table, at the
    channels `planner` would remove at each ratio. Groups the table leaves out take the median ratio."""
    removals = {g.id: {r: np.asarray(planner.removal_of(planner.counts({g.id: r})).get(g.id, []), dtype=np.int64)
                       for r in DEFAULT_RATIOS} for g in candidates}
    ratios_at = sensitivity_ratios(reconstruction_table(model, candidates, removals, batches, providers, budget),
                                   candidates)

    def filled(knob: float) -> dict[str, float]:
        ratios = ratios_at(knob)
        median = float(np.median(list(ratios.values()))) if ratios else min(knob, 0.99)
        return {g.id: ratios.get(g.id, median) for g in candidates}

    return filled
