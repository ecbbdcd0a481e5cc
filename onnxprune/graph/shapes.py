"""Concrete tensor shapes at batch 1: ONNX shape inference first, onnxruntime as the fallback.

The channel rules need real sizes (a Reshape's factorization, a Concat's offsets), so every shape here is
a tuple of ints. ONNX's inference (with data propagation for Shape->Gather->Concat->Reshape chains) runs
on a light copy without the weight bytes; whatever it leaves unknown is read off one onnxruntime run.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnxprune.data import random_feeds, session_specs
from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.graph.runtime import session

LIGHT_LIMIT = 4096  # weights with more elements are replaced by typed graph inputs for inference
RUN_LIMIT = 2**25  # input elements at batch 1 above which shapes are not read off an onnxruntime run


def infer_shapes(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]],
                 where: str = "model") -> dict[str, tuple[int, ...]]:
    """Shapes of all tensors of `proto` (with weight data) when its inputs have `input_shapes`.

    ONNX's strict inference names a model whose shapes contradict each other (a 3-D input into a 2-D
    Conv); since ONNX's inference can be wrong where onnxruntime is right, such a model is refused only
    when onnxruntime cannot run it either.
    """
    light, weight_shapes = _light_copy(proto, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        _refuse_unless_it_runs(proto, input_shapes, where, exc)
        inferred = _lenient(light)
    except Exception:  # noqa: BLE001 - inference fails on custom ops and odd graphs; fall back below
        inferred = _lenient(light)
    shapes = dict(weight_shapes)
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        shape = _static_shape(info)
        if shape is not None:
            shapes[info.name] = shape
    for init in graph.initializer:
        shapes[init.name] = tuple(init.dims)
    missing = [o for n in proto.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_shapes_from_runtime(proto, input_shapes, missing))
    return shapes


def _lenient(light: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - no shapes is a valid answer: rules needing them stop their group
        return light


def _refuse_unless_it_runs(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], where: str,
                           error: Exception) -> None:
    """Raise the inference error as bad input, unless onnxruntime runs the model (then ONNX was wrong)."""
    first = first_line(error, limit=10_000).replace("[ShapeInferenceError] Inference error(s): ", "")
    if not _runs(proto, input_shapes):
        raise OnnxPruneError(f"{where}: inconsistent model: {first[:300]}")


def _runs(proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether onnxruntime runs the model on random inputs (not tried above RUN_LIMIT input elements)."""
    if sum(int(np.prod(shape, dtype=np.float64)) for shape in input_shapes.values()) > RUN_LIMIT:
        return False
    try:
        sess = session(proto, optimize=False)
        sess.run(None, random_feeds(session_specs(sess.get_inputs(), input_shapes)))
    except Exception:  # noqa: BLE001 - any failure means it does not run
        return False
    return True


def _light_copy(
    proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]
) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]]]:
    """A copy whose big weights are typed inputs (no bytes) and whose inputs have fixed shapes."""
    light = onnx.ModelProto()
    light.ir_version = proto.ir_version
    light.opset_import.extend(proto.opset_import)
    light.functions.extend(proto.functions)
    graph = light.graph
    weight_shapes: dict[str, tuple[int, ...]] = {}
    for inp in proto.graph.input:
        if inp.name in input_shapes:
            elem = inp.type.tensor_type.elem_type
            graph.input.append(onnx.helper.make_tensor_value_info(inp.name, elem, list(input_shapes[inp.name])))
    for init in proto.graph.initializer:
        weight_shapes[init.name] = tuple(init.dims)
        if int(np.prod(init.dims)) > LIGHT_LIMIT:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        else:
            graph.initializer.append(init)
    for node in proto.graph.node:
        big = _big_constant(node)
        if big is not None:
            weight_shapes[node.output[0]] = tuple(big.dims)
            graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], big.data_type, list(big.dims)))
        else:
            graph.node.append(node)
    graph.output.extend(proto.graph.output)
    return light, weight_shapes


def _big_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant":
        return None
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and np.prod(attr.t.dims) > LIGHT_LIMIT:
            return attr.t
    return None


def _static_shape(info: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
        return None
    dims = info.type.tensor_type.shape.dim
    if not all(d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def _shapes_from_runtime(
    proto: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], names: list[str]
) -> dict[str, tuple[int, ...]]:
    """Run the model once with every unknown tensor as an extra output and read the shapes off."""
    if sum(int(np.prod(shape, dtype=np.float64)) for shape in input_shapes.values()) > RUN_LIMIT:
        return {}  # a run could need many times the input's memory (NonZero, Expand): shapes stay unknown
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    known_outputs = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known_outputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        sess = session(probe, optimize=False)
        feeds = random_feeds(session_specs(sess.get_inputs(), input_shapes))
        values = sess.run(names, feeds)
    except Exception:  # noqa: BLE001 - no shapes is a valid answer: rules needing them stop their group
        return {}
    return {name: tuple(np.shape(v)) for name, v in zip(names, values)}


# --- values of shape computations (Shape -> Gather -> Div -> Concat -> Reshape chains) --------------

SMALL = 64  # shape computations produce short integer vectors


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return (np.trunc(a / b)).astype(a.dtype)
    return a / b


def _slice_values(data, starts, ends, axes=None, steps=None):
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(int(s), int(e), int(st))
    return data[tuple(index)]


_EVAL = {
    "Gather": lambda n, x, i: np.take(x, i.astype(np.int64), axis=int(n.attrs.get("axis", 0))),
    "Unsqueeze": lambda n, x, a=None: np.expand_dims(x, tuple(sorted(
        int(v) % (x.ndim + len(np.atleast_1d(a if a is not None else n.attrs["axes"])))
        for v in np.atleast_1d(a if a is not None else n.attrs["axes"])))),
    "Squeeze": lambda n, x, a=None: np.squeeze(x, axis=tuple(int(v) for v in np.atleast_1d(
        a if a is not None else n.attrs.get("axes", [i for i, d in enumerate(x.shape) if d == 1])))),
    "Concat": lambda n, *xs: np.concatenate([np.atleast_1d(x) for x in xs], axis=int(n.attrs["axis"])),
    "Cast": lambda n, x: x.astype(onnx.helper.tensor_dtype_to_np_dtype(int(n.attrs["to"]))),
    "Add": lambda n, a, b: a + b,
    "Sub": lambda n, a, b: a - b,
    "Mul": lambda n, a, b: a * b,
    "Div": lambda n, a, b: _int_div(a, b),
    "Mod": lambda n, a, b: np.mod(a, b),
    "Floor": lambda n, x: np.floor(x),
    "Ceil": lambda n, x: np.ceil(x),
    "Neg": lambda n, x: -x,
    "Abs": lambda n, x: np.abs(x),
    "Sqrt": lambda n, x: np.sqrt(x),
    "Max": lambda n, *xs: np.maximum.reduce(xs),
    "Min": lambda n, *xs: np.minimum.reduce(xs),
    "Equal": lambda n, a, b: np.equal(a, b),
    "Less": lambda n, a, b: np.less(a, b),
    "Greater": lambda n, a, b: np.greater(a, b),
    "Not": lambda n, x: np.logical_not(x),
    "Where": lambda n, c, a, b: np.where(c, a, b),
    "Identity": lambda n, x: x,
    "Transpose": lambda n, x: np.transpose(x, n.attrs.get("perm")),
    "Reshape": lambda n, x, s: x.reshape([int(d) if d != 0 else x.shape[i] for i, d in enumerate(s)]),
    "Slice": lambda n, x, s, e, a=None, st=None: _slice_values(x, s, e, a, st),
    "ReduceProd": lambda n, x, a=None: _reduce_prod(n, x, a),
    "ConstantOfShape": lambda n, s: _constant_of_shape(n, s),
}


def _constant_of_shape(node, shape: np.ndarray) -> np.ndarray:
    """ConstantOfShape (the ones and -1 masks of exported `expand` targets): its `value`, float 0 by default."""
    value = node.attrs.get("value")
    fill = np.asarray(getattr(value, "values", value)).reshape(-1) if value is not None else np.zeros(1, np.float32)
    return np.full([int(d) for d in np.atleast_1d(shape)], fill[0], dtype=fill.dtype)


def _reduce_prod(node, x: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """ReduceProd over its axes (an input from opset 18, an attribute before); no axes: all of them,
    or none with noop_with_empty_axes."""
    axes = np.atleast_1d(axes if axes is not None else node.attrs.get("axes", [])).astype(np.int64)
    keepdims = bool(node.attrs.get("keepdims", 1))
    if axes.size == 0:
        return x if node.attrs.get("noop_with_empty_axes", 0) else np.prod(x, keepdims=keepdims)
    return np.prod(x, axis=tuple(int(a) % x.ndim for a in axes), keepdims=keepdims)


def shape_values(graph, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Values of the small integer tensors computed from `Shape` ops and constants, at batch 1.

    Rules use them to read Slice bounds or Pad amounts an exporter computed at run time (PyTorch's
    `chunk` slices at `Shape(x)[1] // 2`).
    """
    import onnx_graphsurgeon as gs

    values: dict[str, np.ndarray] = {}

    def known(t) -> np.ndarray | None:
        if isinstance(t, gs.Constant):
            v = np.asarray(t.values)
            return v if v.size <= SMALL else None
        if not t.name:
            return None
        return values.get(t.name)

    for node in graph.nodes:
        if not node.outputs:
            continue
        out = node.outputs[0]
        if node.op == "Shape":
            source = node.inputs[0]
            shape = tuple(source.values.shape) if isinstance(source, gs.Constant) else shapes.get(source.name)
            if shape is not None:
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                values[out.name] = np.array(shape[start:end], dtype=np.int64)
            continue
        if node.op == "Size":
            shape = shapes.get(node.inputs[0].name)
            if shape is not None:
                values[out.name] = np.array(int(np.prod(shape)), dtype=np.int64)
            continue
        fn = _EVAL.get(node.op)
        if fn is None or not node.inputs or len(node.outputs) != 1:
            continue
        args = [known(t) if t.name or isinstance(t, gs.Constant) else None for t in node.inputs]
        required = [a for a, t in zip(args, node.inputs) if t.name or isinstance(t, gs.Constant)]
        if any(a is None for a in required) or not required:
            continue
        try:
            with np.errstate(all="ignore"):
                result = np.asarray(fn(node, *args))
        except Exception:  # noqa: BLE001 - an op we evaluate wrongly just stays unknown
            continue
        if result.size <= SMALL:
            values[out.name] = result
    return values
