"""onnxruntime sessions from in-memory models, and the inputs to feed them."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from onnxprune.errors import OnnxPruneError, OptionError, first_line
from onnxprune.graph.model import tensor_dtypes, to_proto

DEFAULT_PROVIDERS = ("CPUExecutionProvider",)


def parse_providers(text: str | None) -> list[str]:
    """`--providers CUDA,CPU` -> onnxruntime provider names, checked against what is installed."""
    if not text:
        return list(DEFAULT_PROVIDERS)
    available = ort.get_available_providers()
    names = []
    for item in text.split(","):
        item = item.strip()
        name = item if item.endswith("ExecutionProvider") else f"{item}ExecutionProvider"
        if name not in available:
            raise OptionError(f"{{providers}}: {item!r} is not available here ({', '.join(available)})")
        names.append(name)
    return names


def check_supported(proto: onnx.ModelProto, where: str) -> None:
    """Refuse an IR version or opset this onnxruntime cannot load, before any work is done on the model.

    Tried on an empty model with the same versions, so it costs no copy of the weights.
    """
    probe = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[o for o in proto.opset_import if o.domain in ("", "ai.onnx")])
    probe.ir_version = proto.ir_version
    try:
        session(probe.SerializeToString(), optimize=False)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for unsupported versions
        raise OnnxPruneError(f"{where}: onnxruntime {ort.__version__} cannot load this model's IR version "
                             f"{proto.ir_version} or opset ({first_line(exc, 200)})") from None


def session(model: onnx.ModelProto | bytes, providers: list[str] | None = None,
            threads: int = 0, lean: bool = False, optimize: bool = True, arena: bool = True,
            spin: bool = True, handed: dict[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """A session built from memory (nothing is written to disk).

    `lean` trades speed for memory (no prepacked weight copies, no arena): for one-off checks. Without
    `arena`, activations are freed as soon as they die instead of held in a pool that only grows (sessions
    that run a few times on big batches). Without `spin`, onnxruntime's threads sleep as soon as a run
    ends instead of busy-waiting for the next one: for runs that alternate with numpy work, whose BLAS
    threads would otherwise share the cores with spinning ones. `handed` are the values of initializers
    that `model` declares external (`hand_over`).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as exceptions; the log would add stderr lines
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if lean or not arena:
        options.enable_cpu_mem_arena = False
    if lean:
        options.add_session_config_entry("session.disable_prepacking", "1")
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if handed:
        options.add_external_initializers(list(handed), [ort.OrtValue.ortvalue_from_numpy(a) for a in handed.values()])
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=providers or list(DEFAULT_PROVIDERS))


HANDED_BYTES = 1 << 16  # `hand_over` takes initializers bigger than this out of a model's bytes


def hand_over(proto: onnx.ModelProto, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Empty the big initializers of `proto` and declare them external; returns their values, to give
    `session` as `handed`: onnxruntime then copies each array once, instead of also holding the
    protobuf's copy and its serialized bytes while it builds the session (8 convs of 75 MB of weights
    in all: 171 MB held after the first run instead of 297). `values` are the arrays by name."""
    handed = {}
    for tensor in proto.graph.initializer:
        array = values.get(tensor.name)
        if array is not None and array.nbytes > HANDED_BYTES and tensor.HasField("raw_data"):
            handed[tensor.name] = np.ascontiguousarray(array)
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value="handed-over-in-memory")
    return handed


def take_back(proto: onnx.ModelProto, handed: dict[str, np.ndarray]) -> None:
    """Undo `hand_over`: the values back in `proto` (for an onnxruntime that refuses handed initializers)."""
    for i, tensor in enumerate(proto.graph.initializer):
        if tensor.name in handed:
            proto.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(handed[tensor.name], tensor.name))


FED_LIMIT = 1024  # weights with more elements are fed as inputs by `run_graph` instead of copied


def run_graph(graph: gs.Graph, like: onnx.ModelProto, feeds: dict[str, np.ndarray],
              providers: list[str] | None = None, optimize: bool = True) -> list[np.ndarray]:
    """Run an IR graph once without copying its weights: they are fed as inputs.

    A session built from a serialized model holds the protobuf, its bytes and onnxruntime's own copy of
    every weight; feeding numpy arrays costs nothing. Slower per run (no prepacking), which does not
    matter for a single check.
    """
    structure = graph.copy()
    weights: dict[str, np.ndarray] = {}
    for tensor in list(structure.tensors().values()):
        if isinstance(tensor, gs.Constant) and tensor.values.size > FED_LIMIT:
            array = np.ascontiguousarray(tensor.values)
            weights[tensor.name] = array
            variable = gs.Variable(tensor.name, dtype=array.dtype, shape=array.shape)
            for consumer in list(tensor.outputs):
                for i, t in enumerate(consumer.inputs):
                    if t is tensor:
                        consumer.inputs[i] = variable
            structure.inputs.append(variable)
    sess = session(to_proto(structure, like), providers, lean=True, optimize=optimize)
    return sess.run(None, {**feeds, **weights})


def subgraph_session(nodes: list[gs.Node], inputs: dict[str, np.dtype], outputs: dict[str, np.dtype | None],
                     like: onnx.ModelProto,
                     providers: list[str] | None = None, weights: dict[str, np.ndarray] | None = None,
                     threads: int = 0) -> ort.InferenceSession:
    """A session for a run of a graph's nodes: `inputs` in, `outputs` out (name -> dtype; None: inferred),
    any batch size.

    `weights` replaces the values of some weights in this session only (the graph is not changed). Its
    threads do not spin: stage runs alternate with numpy work on the same cores (`recover.staged`).
    """
    weights = weights or {}
    tensors = {t.name: t for n in nodes for t in list(n.inputs) + list(n.outputs)}
    graph = gs.Graph(nodes=list(nodes), inputs=[tensors[n] for n in inputs], outputs=[tensors[n] for n in outputs])
    swapped = []
    for name, tensor in tensors.items():
        if name in weights and isinstance(tensor, gs.Constant):
            swapped.append((tensor, tensor.values))
            tensor.values = weights[name]
    saved = [(t, t.dtype, t.shape) for t in graph.inputs + graph.outputs]
    try:
        for tensor in graph.inputs:
            tensor.dtype, tensor.shape = inputs[tensor.name], None
        for tensor in graph.outputs:
            tensor.dtype, tensor.shape = outputs[tensor.name], None
        proto = to_proto(graph, like)
        arrays = {name: t.values for name, t in tensors.items() if isinstance(t, gs.Constant)}
    finally:
        for tensor, values in swapped:
            tensor.values = values
        for tensor, dtype, shape in saved:
            tensor.dtype, tensor.shape = dtype, shape
    del proto.graph.value_info[:]
    if any(dtype is None for dtype in outputs.values()):
        inferred = tensor_dtypes(proto)
        for info in proto.graph.output:
            if not info.type.tensor_type.elem_type and info.name in inferred:
                info.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(inferred[info.name])
    for info in proto.graph.output:
        info.type.tensor_type.ClearField("shape")
    handed = hand_over(proto, arrays)
    del arrays
    try:
        return session(proto, providers, threads, arena=False, spin=False, handed=handed)
    except Exception:  # an onnxruntime without external initializers: the weights go in the bytes
        if not handed:
            raise
        take_back(proto, handed)
        return session(proto, providers, threads, arena=False, spin=False)


def max_relative_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """max |a - b| / max |a| over all outputs (the invariant's measure)."""
    worst = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        scale = max(float(np.abs(x).max(initial=0.0)), 1e-12)
        worst = max(worst, float(np.abs(x - y).max(initial=0.0)) / scale)
    return worst
