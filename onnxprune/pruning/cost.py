"""MACs and parameters per layer, for the model as it is or as it would be after a plan.

MACs are counted at batch 1 for the operators whose registry entry has a `macs` function (Conv,
ConvTranspose, Gemm and MatMul: the `inspect --json` contract; LSTM, GRU, QLinearConv, QLinearMatMul);
params are the elements of float weights (a QDQ model's weights are lifted to floats at load), or of the
inputs the entry names (`params`: QLinearConv's integer weights; none for Q/DQ scales). `kept(tensor, axis)` gives an axis's size after pruning, so the planner can ask "what would this
cost?" without building the pruned model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.rules import entry_for

Kept = Callable[[str, int, int], int]  # (tensor name, axis, full size) -> size after pruning


@dataclass
class LayerCost:
    """What one node costs."""

    node: str
    op: str
    macs: int
    params: int


def _unchanged(name: str, axis: int, size: int) -> int:
    return size


def layer_costs(model: Model, kept: Kept = _unchanged) -> list[LayerCost]:
    """Cost of every node that computes MACs or owns weights, in graph order."""
    seen: set[str] = set()
    costs = []
    for node in model.graph.nodes:
        macs = _macs(node, model.shapes, kept)
        params = 0
        rule = entry_for(node)
        counted = rule.params if rule is not None else None
        for i, t in enumerate(node.inputs):
            if not isinstance(t, gs.Constant) or t.name in seen:
                continue
            if i in counted if counted is not None else np.issubdtype(t.values.dtype, np.floating):
                seen.add(t.name)
                params += int(np.prod([kept(t.name, a, d) for a, d in enumerate(t.values.shape)], dtype=np.int64))
        if macs or params:
            costs.append(LayerCost(node.name or node.outputs[0].name, node.op, macs, params))
    return costs


def totals(costs: list[LayerCost]) -> tuple[int, int]:
    """(MACs, params) of a list of layer costs."""
    return sum(c.macs for c in costs), sum(c.params for c in costs)


def _dims(tensor: gs.Tensor, shapes: dict[str, tuple[int, ...]], kept: Kept) -> list[int] | None:
    shape = tuple(tensor.values.shape) if isinstance(tensor, gs.Constant) else shapes.get(tensor.name)
    if shape is None:
        return None
    return [kept(tensor.name, a, d) for a, d in enumerate(shape)]


def _macs(node: gs.Node, shapes: dict[str, tuple[int, ...]], kept: Kept) -> int:
    rule = entry_for(node)
    if rule is None or rule.macs is None or len(node.inputs) <= rule.weight_input:
        return 0
    dims = [_dims(t, shapes, kept) for t in (node.inputs[0], node.inputs[rule.weight_input], node.outputs[0])]
    return 0 if any(d is None for d in dims) else int(rule.macs(*dims))
