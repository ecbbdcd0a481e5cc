"""`transform`: turn a sparse model into a dense (slim) one, without the plan.

A channel is removed when every slice that produces it — weight rows, biases, BatchNorm scale and bias,
per-channel constants — is exactly zero. So a sparse model fine-tuned elsewhere with its masks kept, and
re-exported, transforms the same way as one fresh from `prune --mode sparse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnxprune.graph.model import Model, to_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.masks import zero_channels
from onnxprune.pruning.plan import Plan, Planner
from onnxprune.pruning.prune import check_same_function
from onnxprune.pruning.surgery import slim_graph


@dataclass
class TransformResult:
    plan: Plan  # what was found zero and removed
    model: onnx.ModelProto
    difference: float | None = None  # measured dense-vs-sparse difference when verified


def transform(model: Model, verify: bool = True, providers: list[str] | None = None,
              attention: str = "dims") -> TransformResult:
    """Remove every all-zero channel of every prunable group (and check the result computes the same).

    `attention` as in `find_groups`: a model whose whole heads were zeroed needs "heads".
    """
    groups = find_groups(model, attention)
    prunable = [g for g in groups if g.prunable and g.channels > 1]
    removed = {g.id: zero_channels(model, g) for g in prunable}
    scores = {g.id: np.where(np.isin(np.arange(g.channels), removed[g.id]), 0.0, 1.0) for g in prunable}
    planner = Planner(model, groups, scores)
    plan = planner.plan({gid: len(r) / planner.groups[gid].channels for gid, r in removed.items() if r})
    dense = slim_graph(model, groups, plan)
    difference = check_same_function(model, dense, providers) if verify and plan.groups else None
    return TransformResult(plan, to_proto(dense, model.skeleton, consume=True), difference)
