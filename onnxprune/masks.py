"""Channel masks: which weight elements of a sparse model must stay zero while a framework fine-tunes it.

Masks are keyed by the names the ONNX file gives its weights (initializers, or `Constant` node outputs)
and are boolean arrays in the file's layout, True where the value must stay zero. So an adapter maps
them exactly as it maps the weights — by name — and needs to know nothing about channel groups. A weight
the exporter transposes or reshapes at run time (PyTorch's Linear on 3-D input) gets its mask in the
stored layout, like its values.

Example:
    masks = masks_from_plan(model, groups, plan)
    lost = enforce(returned_proto, masks)   # re-zero whatever a framework let drift; returns the count
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.channels import Group
from onnxprune.errors import OnnxPruneError
from onnxprune.io import Model
from onnxprune.plan import Plan
from onnxprune.rules import ZEROED_ROLES
from onnxprune.surgery import removed_slices


@dataclass
class Masks:
    """`zero[name]` is a bool array of weight `name`'s shape: True where the value must stay 0."""

    zero: dict[str, np.ndarray]

    @property
    def elements(self) -> int:
        """How many weight elements are held at zero."""
        return int(sum(int(m.sum()) for m in self.zero.values()))

    def to_npz(self) -> bytes:
        """The masks as an `.npz` (one bool array per weight name), the format command adapters receive."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **self.zero)
        return buffer.getvalue()

    @staticmethod
    def from_npz(data: bytes, where: str = "masks") -> Masks:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
                return Masks({name: np.asarray(arrays[name], dtype=bool) for name in arrays.files})
        except (ValueError, OSError, KeyError) as exc:
            raise OnnxPruneError(f"{where}: not a masks file ({exc})") from None


def masks_from_plan(model: Model, groups: list[Group], plan: Plan) -> Masks:
    """The masks of the sparse model `surgery.sparse(model, groups, plan)`: every producer slice
    (weights, biases, BatchNorm scale and bias, per-channel constants) of every removed channel."""
    weights = model.weights()
    zero: dict[str, np.ndarray] = {}
    for member, index in removed_slices(groups, plan):
        if member.role not in ZEROED_ROLES or member.tensor not in weights:
            continue
        mask = zero.get(member.tensor)
        if mask is None:
            mask = zero[member.tensor] = np.zeros(np.shape(weights[member.tensor].values), dtype=bool)
        where = [slice(None)] * mask.ndim
        where[member.axis] = index
        mask[tuple(where)] = True
    return Masks(dict(_stored_layout(model, name, mask) for name, mask in zero.items()))


def _stored_layout(model: Model, name: str, mask: np.ndarray) -> tuple[str, np.ndarray]:
    """A lifted weight's mask in the layout and under the name the file stores it."""
    how = model.derived.get(name)
    if how is None:
        return name, mask
    return how.source, how.to_source(mask.astype(np.float32)) != 0


def weight_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every weight stored in the file by name: initializers and `Constant` node values."""
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors[node.output[0]] = attr.t
    return tensors


def weight_arrays(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of every stored weight by name (for adapters that load weights by name)."""
    return {name: numpy_helper.to_array(t) for name, t in weight_tensors(proto).items()}


def enforce(proto: onnx.ModelProto, masks: Masks, where: str = "model") -> int:
    """Set every masked element of `proto` to zero, in place; return how many were not zero."""
    tensors = weight_tensors(proto)
    lost = 0
    for name, mask in masks.zero.items():
        tensor = tensors.get(name)
        if tensor is None:
            raise OnnxPruneError(f"{where}: has no weight named {name!r} (the masks name it)")
        values = numpy_helper.to_array(tensor)
        if values.shape != mask.shape:
            raise OnnxPruneError(f"{where}: weight {name!r} has shape {list(values.shape)}, its mask "
                                 f"{list(mask.shape)}")
        drifted = int(np.count_nonzero(values[mask]))
        if drifted:
            values = values.copy()
            values[mask] = 0
            tensor.CopyFrom(numpy_helper.from_array(values, name=tensor.name))
            lost += drifted
    return lost
