"""The graph IR a loaded model is, and the way back to protobuf.

A `Model` is an onnx-graphsurgeon graph in which every weight is a `gs.Constant`, wherever the exporter
put it (see `load`), plus a *skeleton*: the original protobuf with the weight bytes stripped, so a sparse
model is written back as exactly the graph it came from (same nodes, same names), only with other values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from onnxprune.errors import OnnxPruneError


@dataclass
class Quant:
    """How a quantized weight (int8 values behind a dequantizing node) maps to its float values:
    `float = (int - zero_point) * scale`, per tensor or per channel along `axis`.

    Kept with the folded float weight so the file gets the integers back, and so slim pruning can slice
    the scale and zero point with the channels (`lift.lower_quantized` writes the node back).
    """

    node: str  # the dequantizing node's name
    attrs: dict  # its attributes (axis, ...)
    scale: np.ndarray
    zero_point: np.ndarray | None
    scale_name: str
    zero_point_name: str | None
    dtype: np.dtype  # the integers'
    float_source: bool = False  # the file stores floats quantized at run time (QuantizeLinear of a weight)

    @property
    def axis(self) -> int | None:
        """The channel axis of per-channel scales (None: one scale for the tensor)."""
        return int(self.attrs.get("axis", 1)) if self.scale.size > 1 else None

    def broadcast(self, values: np.ndarray, ndim: int) -> np.ndarray:
        """Scale or zero point shaped to broadcast against a weight of rank `ndim`."""
        if self.axis is None:
            return values.reshape(())
        shape = [1] * ndim
        shape[self.axis % ndim] = -1
        return values.reshape(shape)

    def quantize(self, values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
        """Integers whose dequantized values are `values` (exact for values that came from integers)."""
        dtype = self.dtype
        ndim = values.ndim
        q = np.rint(np.asarray(values, dtype=np.float64) / self.broadcast(scale.astype(np.float64), ndim))
        if zero_point is not None:
            q = q + self.broadcast(zero_point.astype(np.float64), ndim)
        info = np.iinfo(dtype)
        return np.clip(q, info.min, info.max).astype(dtype)


@dataclass
class Derived:
    """A weight the exporter reshaped, transposed, cast or dequantized at run time, folded at load time.

    Writing the original graph back needs the inverse: the source's values from the folded ones.
    """

    source: str
    perm: tuple[int, ...] | None  # transposed with this permutation
    shape: tuple[int, ...]  # the shape before this step (the source's, for a single step)
    dtype: np.dtype
    quant: Quant | None = None  # dequantized: the source holds integers
    inner: Derived | None = None  # the earlier steps of a chain (an fp16 weight Cast, then Transposed)

    def representable(self, values: np.ndarray) -> np.ndarray:
        """The nearest values the source can hold (a quantized weight's grid); others as they are."""
        if self.quant is None:
            return values
        q = self.quant
        ints = q.quantize(values, q.scale, q.zero_point).astype(np.float64)
        shift = q.broadcast(q.zero_point.astype(np.float64), ints.ndim) if q.zero_point is not None else 0.0
        return ((ints - shift) * q.broadcast(q.scale.astype(np.float64), ints.ndim)).astype(values.dtype)

    def to_source(self, values: np.ndarray) -> np.ndarray:
        if self.quant is not None and not self.quant.float_source:
            return self.quant.quantize(values, self.quant.scale, self.quant.zero_point)
        if self.quant is not None:  # floats on the grid: quantizing them at run time gives the same integers
            values = self.representable(values)
        if self.perm is not None:
            values = np.transpose(values, np.argsort(self.perm))
        values = np.asarray(values).reshape(self.shape).astype(self.dtype)
        return self.inner.to_source(values) if self.inner is not None else values


@dataclass
class Model:
    """A loaded model: the IR the pruner works on plus what is needed to write it back.

    Attributes:
        graph: the onnx-graphsurgeon graph; weights are `gs.Constant` with numpy values loaded.
        skeleton: the original ModelProto with the bytes of every weight stripped.
        input_shapes: concrete shape of every graph input used for shape inference (batch 1).
        shapes: concrete shape at batch 1 of every tensor whose shape is known.
        path: where the model was read from, if from a file.
    """

    graph: gs.Graph
    skeleton: onnx.ModelProto
    input_shapes: dict[str, tuple[int, ...]]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    path: Path | None = None
    derived: dict[str, Derived] = field(default_factory=dict)

    @property
    def opset(self) -> int:
        return opset_of(self.skeleton)

    def weights(self) -> dict[str, gs.Constant]:
        """Every weight of the graph by name."""
        return {name: t for name, t in self.graph.tensors().items() if isinstance(t, gs.Constant)}

    def representable(self, name: str, values: np.ndarray) -> np.ndarray:
        """The nearest values weight `name` can hold: new values for a weight dequantized at load time
        (QDQ) go back onto its grid, so the model computes what its written-back integers will."""
        how = self.derived.get(name)
        return how.representable(values) if how is not None else values


def to_proto(graph: gs.Graph, like: onnx.ModelProto, consume: bool = False) -> onnx.ModelProto:
    """Export a (changed) graph to a ModelProto that keeps the original's opsets and metadata.

    With `consume`, big weights are moved into the protobuf one at a time and dropped from the graph
    (which is left unusable): the export then never holds two copies of the weights.
    """
    moved: dict[str, np.ndarray] = {}
    if consume:
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and tensor.values.size > 1024:
                moved[tensor.name] = tensor.values
                tensor.values = np.zeros(0, dtype=tensor.values.dtype)
    proto = gs.export_onnx(graph, do_type_check=False)
    for init in proto.graph.initializer:
        if init.name in moved:
            init.CopyFrom(numpy_helper.from_array(np.asarray(moved.pop(init.name)), init.name))
    proto.ir_version = like.ir_version
    if proto.ir_version < 4:  # IR 3 wants every initializer listed as a graph input too
        listed = {i.name for i in proto.graph.input}
        proto.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                 for t in proto.graph.initializer if t.name not in listed)
    del proto.opset_import[:]
    proto.opset_import.extend(like.opset_import)
    proto.producer_name = like.producer_name
    proto.producer_version = like.producer_version
    proto.metadata_props.extend(like.metadata_props)
    return proto


def stored_values(model: Model, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weight values under the names and in the layout the file stores them: a weight the exporter
    transposed or reshaped at run time (folded at load) is stored as its source."""
    stored = {}
    for name, array in values.items():
        how = model.derived.get(name)
        stored[how.source if how else name] = how.to_source(array) if how else array
    return stored


def weight_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Every weight stored in a file by name: initializers and `Constant` node values."""
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                    tensors[node.output[0]] = attr.t
    return tensors


def with_weights(model: Model, values: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """The original graph (the skeleton) filled with the model's weights, `values` overriding some.

    This is how a sparse model is written: same nodes, same names, same shapes, other values.
    """
    values = stored_values(model, values or {})
    proto = onnx.ModelProto()
    proto.CopyFrom(model.skeleton)
    weights = model.weights()
    lost = sorted(set(values) - set(weight_tensors(proto)))
    if lost:  # a changed weight the file does not store as such: writing the rest would be silently wrong
        raise OnnxPruneError(f"weight '{lost[0]}' is not stored in the model file; its new values cannot be written")
    for name, tensor in weight_tensors(proto).items():
        if name not in weights and name not in values:
            continue  # not a weight the graph uses: the skeleton kept its bytes
        array = values.get(name)
        if array is None:
            array = weights[name].values
        tensor.CopyFrom(numpy_helper.from_array(np.asarray(array, dtype=_np_dtype(tensor)), tensor.name))
    return proto


def opset_of(proto: onnx.ModelProto) -> int:
    """The default-domain opset a model imports (0 when none)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)


def tensor_dtypes(proto: onnx.ModelProto) -> dict[str, np.dtype]:
    """Element type of every tensor ONNX type inference can tell (weights need no bytes for it)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # noqa: BLE001 - custom ops and odd graphs: whatever the graph declares
        inferred = proto
    graph = inferred.graph
    dtypes = {}
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        elem = info.type.tensor_type.elem_type if info.type.HasField("tensor_type") else 0
        if elem:
            dtypes[info.name] = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return dtypes
