"""Lift weights out of the nodes exporters wrap them in, so every weight is a `gs.Constant` the rules
can see: `Constant` nodes, `Identity`, and run-time `Cast`/`Transpose`/`Reshape`/`Flatten` of a constant
(folded, with the inverse kept in `Derived` to write the file back as it was).

Quantized (QDQ) weights, integers behind a `DequantizeLinear`, are lifted the same way: the rules see the
float weight, so a QDQ model has the groups of its float twin, and the integers, scale and zero point are
kept in `Quant`. A sparse model writes the integers back (a zeroed float is the zero point); a slim model
gets its `DequantizeLinear` nodes back with scale and zero point sliced with the channels
(`lower_quantized`), so it stays a QDQ model with the same quantization."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Derived, Quant


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
        elif node.op == "DequantizeLinear":
            lifted = _dequantize(node) or _quantized_at_run_time(node, derived)
            if lifted is None:
                continue
            derived[out.name] = lifted[1]
            _replace_tensor(graph, out, gs.Constant(out.name, lifted[0]))
        elif node.inputs and getattr(derived.get(node.inputs[0].name), "quant", None) is not None:
            continue  # a layout op of a dequantized weight stays (the integers keep their own layout)
        else:
            folded = _fold_layout(node)
            if folded is None:
                continue
            source = node.inputs[0]
            first = derived.pop(source.name, None)  # a chain (Cast -> Transpose): point at the stored weight
            derived[out.name] = Derived(first.source if first else source.name, folded[1],
                                        tuple(source.values.shape), source.values.dtype, inner=first)
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


def _dequantize(node: gs.Node) -> tuple[np.ndarray, Derived] | None:
    """The float value of a `DequantizeLinear` of a constant integer weight nothing else reads, and how to
    get the integers back; None for activations, blocked quantization and shared integers."""
    x, scale = node.inputs[0], node.inputs[1] if len(node.inputs) > 1 else None
    zp = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if not isinstance(x, gs.Constant) or len(x.outputs) != 1 or not isinstance(scale, gs.Constant):
        return None
    if zp is not None and not isinstance(zp, gs.Constant) or int(node.attrs.get("block_size", 0)):
        return None
    ints, scales = np.asarray(x.values), np.asarray(scale.values)
    if not np.issubdtype(ints.dtype, np.integer) or scales.ndim > 1 or ints.ndim == 0:
        return None
    points = np.asarray(zp.values) if zp is not None else None
    quant = Quant(node.name, dict(node.attrs), scales, points, scale.name, zp.name if zp is not None else None,
                  ints.dtype)
    if quant.axis is not None and not -ints.ndim <= quant.axis < ints.ndim:
        return None
    shifted = ints.astype(np.int64) - (quant.broadcast(points.astype(np.int64), ints.ndim) if zp is not None else 0)
    values = (shifted.astype(scales.dtype) * quant.broadcast(scales, ints.ndim)).astype(scales.dtype)
    return values, Derived(x.name, None, tuple(ints.shape), ints.dtype, quant=quant)


def _quantized_at_run_time(node: gs.Node, derived: dict[str, Derived]) -> tuple[np.ndarray, Derived] | None:
    """`DequantizeLinear(QuantizeLinear(w))` of a float weight w nothing else reads, with the same scale and
    zero point: how `quantize_static` quantizes a weight it took for an activation (one transposed at run
    time, as unfolded PyTorch exports of Linear on 3-D inputs have). Lifted to the values on the grid; the
    QuantizeLinear goes too (the caller's cleanup), and a slim model gets the integers behind the
    `DequantizeLinear` (the same quantization, the QuantizeLinear folded)."""
    x = node.inputs[0]
    q = x.inputs[0] if isinstance(x, gs.Variable) and len(x.inputs) == 1 and len(x.outputs) == 1 else None
    if q is None or q.op != "QuantizeLinear" or len(q.inputs) != len(node.inputs) or q.attrs != node.attrs:
        return None
    w = q.inputs[0]
    same = all(a is b for a, b in zip(q.inputs[1:], node.inputs[1:]))
    if not same or not isinstance(w, gs.Constant) or len(w.outputs) != 1 or w.values.ndim == 0:
        return None
    if not np.issubdtype(w.values.dtype, np.floating) or not all(isinstance(t, gs.Constant) for t in q.inputs[1:]):
        return None
    scale, zp = q.inputs[1], q.inputs[2] if len(q.inputs) > 2 else None
    points = np.asarray(zp.values) if zp is not None else None
    quant = Quant(node.name, dict(node.attrs), np.asarray(scale.values), points, scale.name,
                  zp.name if zp is not None else None, points.dtype if points is not None else np.dtype(np.uint8),
                  float_source=True)
    first = derived.get(w.name)  # the weight itself folded from a run-time Transpose: keep its source
    if first is not None and first.quant is not None or scale.values.ndim > 1:
        return None
    derived.pop(w.name, None)
    how = Derived(first.source, first.perm, first.shape, first.dtype, quant=quant, inner=first.inner) \
        if first is not None else Derived(w.name, None, tuple(w.values.shape), w.values.dtype, quant=quant)
    q.outputs.clear()
    q.inputs.clear()
    return how.representable(np.asarray(w.values)), how


def lower_quantized(graph: gs.Graph, derived: dict[str, Derived], removed: dict[tuple[str, int], np.ndarray]
                    ) -> gs.Graph:
    """Put the `DequantizeLinear` of every lifted quantized weight back, its integers requantized from the
    (pruned) float values and its per-channel scale and zero point sliced like the weight (`removed`:
    indices removed per (weight, axis))."""
    made: dict[str, gs.Constant] = {}

    def constant(name: str, values: np.ndarray) -> gs.Constant:
        if name in made and not np.array_equal(made[name].values, values):
            name = f"{name}_{len(made)}"  # a scale two weights share, now sliced differently
        made.setdefault(name, gs.Constant(name, values))
        return made[name]

    for name, tensor in list(graph.tensors().items()):
        how = derived.get(name)
        if how is None or how.quant is None or not isinstance(tensor, gs.Constant):
            continue
        quant, values = how.quant, np.asarray(tensor.values)
        drop = removed.get((name, quant.axis % values.ndim)) if quant.axis is not None else None
        scale, point = quant.scale, quant.zero_point
        if drop is not None:
            scale = np.delete(scale, drop)
            point = np.delete(point, drop) if point is not None else None
        ints = quant.quantize(values, scale, point)
        inputs = [constant(f"{how.source}_quantized" if quant.float_source else how.source, ints),
                  constant(quant.scale_name, scale)]
        if point is not None:
            inputs.append(constant(quant.zero_point_name, point))
        out = gs.Variable(name, dtype=values.dtype, shape=list(values.shape))
        _replace_tensor(graph, tensor, out)
        graph.nodes.append(gs.Node("DequantizeLinear", quant.node, dict(quant.attrs), inputs=inputs, outputs=[out]))
    return graph.toposort()


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
