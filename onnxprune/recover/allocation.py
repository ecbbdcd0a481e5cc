"""Per-group ratios from what reconstruction cannot recover, priced per MAC (`--allocation
reconstruction`, the default with `--data`).

The greedy pass (`recover.greedy`) removes each group's channels in steps and knows, after each step, the
output error its re-solved readers cannot make up for (relative to their output energy): an error curve
per group, for free. Allocation prices each step by the error it adds per share of the model's MACs it
removes, and takes steps from every group while they cost at most one price, bisected until the MACs
land on the target: the plan of least total error for its MACs (a Lagrangian rule; the curves are made
monotone, as `--sens` tables are).

Why per MAC: allocation by the error alone (the threshold rule of `--sens` on the same curves) sends
groups whose channels cost little error but save few MACs to 60-70% of their channels — PP-OCRv4's
recognizer's transformer groups, which break its strings when all go at once (90% / 9% of its exact
strings kept at 30 / 50% of MACs) — and keeps whole the expensive early convs where a step saves many
MACs. Priced per MAC, the recognizer keeps 100% at 30% of MACs removed, uniform ratios 98%
(benchmarks/recovery.py; README).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from onnxprune.analysis.table import SensitivityTable, ratio_key, sensitivity_ratios
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Planner, uniform_ratios
from onnxprune.recover.greedy import GreedyChoice

METRIC = "-(relative output error after reconstruction per share of MACs removed, at the margin)"


def macs_per_ratio(planner: Planner, gid: str) -> float:
    """The share of the model's MACs one unit of the group's channel ratio removes (measured at half)."""
    return max(planner.plan({gid: 0.5}).macs_ratio / 0.5, 1e-9)


def price_table(choice: GreedyChoice, candidates: list[Group], planner: Planner) -> SensitivityTable:
    """The greedy pass's error curves as a sensitivity table of prices: at each removal step (the
    column: the share of the group removed after it), minus the error the step adds per share of the
    model's MACs it removes, the largest so far (a row only loses). Groups without a curve are left out."""
    rows = {}
    for g in candidates:
        curve = choice.curves.get(g.id, [])
        if len(curve) < 2:
            continue
        scale, price, rows[g.id] = macs_per_ratio(planner, g.id), 0.0, {}
        for (r0, e0), (r1, e1) in itertools.pairwise(curve):
            price = max(price, (e1 - e0) / (r1 - r0) / scale)
            rows[g.id][ratio_key(r1)] = -price
    return SensitivityTable(METRIC, 0.0, rows, {g.id: g.channels for g in candidates if g.id in rows},
                            criterion="greedy", reconstruct=True)


def reconstruction_ratios(choice: GreedyChoice, candidates: list[Group],
                          planner: Planner) -> Callable[[float], dict[str, float]]:
    """Per-group ratios for a knob (for `Planner.fit`): each group the largest ratio whose price is at
    most knob x the highest price (`table.sensitivity_ratios` on `price_table`). Groups without a curve
    (no matrix layer reads them) take the median ratio of the others; with no curve at all, uniform."""
    table = price_table(choice, candidates, planner)
    if not table.groups:
        return uniform_ratios(candidates)
    ratios_at = sensitivity_ratios(table, candidates)

    def filled(knob: float) -> dict[str, float]:
        ratios = ratios_at(knob)
        median = float(np.median(list(ratios.values()))) if ratios else min(knob, 0.99)
        return {g.id: ratios.get(g.id, median) for g in candidates}

    return filled
