"""Channel masks: which weight elements of a sparse model must stay zero while a framework fine-tunes it,
and the reverse reading, which channels of a sparse model are zero already (`zero_channels`).

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

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.model import Model, stored_values, weight_tensors
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.surgery import zeroed_slices
from onnxprune.rules import ZEROED_ROLES


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


def zero_channels(model: Model, group: Group) -> list[int]:
    """Group channels whose producing slices are all exactly zero."""
    weights = model.weights()
    producing = [m for m in group.members if m.role in ZEROED_ROLES and m.tensor in weights]
    if not producing:
        return []
    zero = np.ones(group.channels, dtype=bool)
    for member in producing:
        values = np.asarray(weights[member.tensor].values)
        slices = np.moveaxis(np.take(values, member.index, axis=member.axis), member.axis, 0)
        nonzero = np.any(slices.reshape(len(member.index), -1) != 0, axis=1)
        zero[np.unique(member.channel[nonzero])] = False
    return np.flatnonzero(zero).tolist()


def masks_from_plan(model: Model, groups: list[Group], plan: Plan) -> Masks:
    """The masks of the sparse model `surgery.sparse(model, groups, plan)`: every producer slice
    (weights, biases, BatchNorm scale and bias, per-channel constants) of every removed channel."""
    zero: dict[str, np.ndarray] = {}
    for weight, where in zeroed_slices(model, groups, plan):
        if weight.name not in zero:
            zero[weight.name] = np.zeros(np.shape(weight.values), dtype=bool)
        zero[weight.name][where] = True
    stored = stored_values(model, {name: mask.astype(np.float32) for name, mask in zero.items()})
    return Masks({name: values != 0 for name, values in stored.items()})


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
