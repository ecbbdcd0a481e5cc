"""MACs and parameters per layer, for the model as it is or as it would be after a plan.

MACs are counted for Conv, ConvTranspose, Gemm and MatMul at batch 1 (the `inspect --json` contract);
params are the elements of float weights. `kept(tensor, axis)` gives an axis's size after pruning, so the
planner can ask "what would this cost?" without building the pruned model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.io import Model

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
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen and np.issubdtype(t.values.dtype, np.floating):
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
    if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul") or len(node.inputs) < 2:
        return 0
    a, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    da, dw, dy = _dims(a, shapes, kept), _dims(w, shapes, kept), _dims(y, shapes, kept)
    if da is None or dw is None or dy is None:
        return 0
    if node.op == "Conv":
        return int(np.prod(dw, dtype=np.int64) * np.prod(dy[2:], dtype=np.int64))
    if node.op == "ConvTranspose":
        return int(np.prod(dw, dtype=np.int64) * np.prod(da[2:], dtype=np.int64))
    if node.op == "Gemm":
        return int(dy[0] * np.prod(dw, dtype=np.int64))
    return int(np.prod(dy, dtype=np.int64) * da[-1])
