"""The sparse model's zeros, applied while reconstruction walks the model (`reconstruct`).

The pruned run must see the zeros of every layer before it, the unpruned run none: zeros are applied a
stage at a time just before the pruned run reaches the nodes that read them, and the arrays a later
unpruned stage still reads are kept as they were (`originals`, which that run reads instead).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.surgery import zeroed_slices


class SparseEdits:
    """The sparse zeros, applied stage by stage just before the pruned run reaches them, so that the
    unpruned reference run reads the same arrays first: no copy of the model is kept, only of the
    weights a later stage still reads as they were (the layer being re-solved, shared weights)."""

    def __init__(self, model: Model, groups: list[Group], plan: Plan):
        self.zeros: dict[str, list[tuple[gs.Constant, tuple]]] = {}
        for weight, where in zeroed_slices(model, groups, plan):
            self.zeros.setdefault(weight.name, []).append((weight, where))
        self.readers: dict[str, list[int]] = {}
        for position, node in enumerate(model.graph.nodes):
            for t in node.inputs:
                if isinstance(t, gs.Constant):
                    self.readers.setdefault(t.name, []).append(position)
        self.originals: dict[str, np.ndarray] = {}  # the reference run reads these instead

    def keep_original(self, *tensors: gs.Constant | None) -> None:
        for tensor in tensors:
            if tensor is not None and tensor.name not in self.originals:
                self.originals[tensor.name] = np.array(tensor.values, copy=True)

    def zero(self, start: int, stop: int) -> None:
        """Zero the weights first read by nodes in [start, stop) (keeping originals read again later)."""
        for name in [n for n in self.zeros if start <= min(self.readers.get(n, [start])) < stop]:
            slices = self.zeros.pop(name)
            weight = slices[0][0]
            if max(self.readers.get(name, [0])) >= stop:
                self.keep_original(weight)
            if not weight.values.flags.writeable:
                weight.values = np.array(weight.values)
            for _, where in slices:
                weight.values[where] = 0

    def forget(self, position: int) -> None:
        """Drop the originals no node at or after `position` reads."""
        for name in [n for n in self.originals if max(self.readers.get(n, [0])) < position]:
            del self.originals[name]
