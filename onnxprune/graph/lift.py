"""Lift weights out of the nodes exporters wrap them in, so every weight is a `gs.Constant` the rules
can see: `Constant` nodes, `Identity`, and run-time `Cast`/`Transpose`/`Reshape`/`Flatten` of a constant
(folded, with the inverse kept in `Derived` to write the file back as it was)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Derived


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    """The tensor a `Constant` node produces, whichever attribute holds it."""
    for key in ("value", "sparse_value"):
        if key in node.attrs and isinstance(node.attrs[key], gs.Constant):
            return np.asarray(node.attrs[key].values)
    scalars = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    for key, dtype in scalars.items():
        if key in node.attrs:
            return np.asarray(node.attrs[key], dtype=dtype)
    return None


def _replace_tensor(graph: gs.Graph, old: gs.Tensor, new: gs.Tensor) -> None:
    for consumer in list(old.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is old:
                consumer.inputs[i] = new


def lift_weights(graph: gs.Graph) -> dict[str, Derived]:
    """Turn `Constant` nodes, and Identity/Transpose/Reshape/Cast of a weight, into plain `gs.Constant`s.

    Returns how each folded weight derives from its source (so sparse values can be written back).
    """
    outputs = {id(t) for t in graph.outputs}
    derived: dict[str, Derived] = {}
    for node in list(graph.nodes):
        if len(node.outputs) != 1 or id(node.outputs[0]) in outputs:
            continue
        out = node.outputs[0]
        if node.op == "Constant":
            value = _constant_node_value(node)
            if value is None:
                continue
            _replace_tensor(graph, out, gs.Constant(out.name, value))
        elif node.op == "Identity" and isinstance(node.inputs[0], gs.Constant):
            _replace_tensor(graph, out, node.inputs[0])
        else:
            folded = _fold_layout(node)
            if folded is None:
                continue
            source = node.inputs[0]
            first = derived.pop(source.name, None)  # a chain (Cast -> Transpose): point at the stored weight
            derived[out.name] = Derived(first.source if first else source.name, folded[1],
                                        tuple(source.values.shape), source.values.dtype, first)
            _replace_tensor(graph, out, gs.Constant(out.name, folded[0]))
        node.outputs.clear()
        node.inputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return derived


def _fold_layout(node: gs.Node) -> tuple[np.ndarray, tuple[int, ...] | None] | None:
    """Value of a layout op applied to a weight that nothing else reads, and its permutation if any."""
    if node.op not in ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast") or not node.inputs:
        return None
    source = node.inputs[0]
    others = node.inputs[1:]
    if not isinstance(source, gs.Constant) or len(source.outputs) != 1 or source.values.ndim == 0:
        return None
    if not all(isinstance(t, gs.Constant) for t in others):
        return None
    x = np.asarray(source.values)
    args = [np.asarray(t.values) for t in others]
    try:
        if node.op == "Transpose":
            perm = tuple(int(p) for p in node.attrs.get("perm", range(x.ndim - 1, -1, -1)))
            return np.transpose(x, perm), perm
        if node.op == "Cast":
            return x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))), None
        if node.op == "Flatten":
            axis = int(node.attrs.get("axis", 1))
            axis = axis + x.ndim if axis < 0 else axis  # in [-rank, rank]: rank itself gives [everything, 1]
            return x.reshape(int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))), None
        if node.op == "Reshape":
            target = [int(d) if d != 0 else x.shape[i] for i, d in enumerate(args[0])]
            return x.reshape(target), None
        axes = args[0] if args else np.asarray(node.attrs.get("axes", []))
        if node.op == "Unsqueeze":
            rank = x.ndim + len(axes)
            return np.expand_dims(x, tuple(sorted(int(a) % rank for a in axes))), None
        squeeze = tuple(int(a) % x.ndim for a in axes) if len(axes) else None
        return np.squeeze(x, axis=squeeze), None
    except (ValueError, KeyError, IndexError):
        return None


def load_values_and_strip(graph: gs.Graph, proto: onnx.ModelProto) -> None:
    """Load every weight into numpy, then drop the bytes from the protobuf (which becomes the skeleton)."""
    used = set()
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant):
            tensor.values = np.asarray(tensor.values)
            used.add(tensor.name)
    for init in proto.graph.initializer:
        if init.name in used:
            _strip(init)
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in used:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    _strip(attr.t)


def _strip(tensor: onnx.TensorProto) -> None:
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        tensor.ClearField(name)
    tensor.ClearField("external_data")
    tensor.data_location = onnx.TensorProto.DEFAULT
