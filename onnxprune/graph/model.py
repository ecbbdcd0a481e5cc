"""Load and save models: the only module that turns ONNX protobuf into the graph IR and back.

A loaded `Model` is an onnx-graphsurgeon graph in which every weight is a `gs.Constant`, wherever the
exporter put it: initializers, `Constant` nodes (PaddlePaddle exports have no initializers) or behind an
`Identity` node (PyTorch does that for shared weights). It also keeps a *skeleton*: the original
protobuf with the weight bytes stripped, so a sparse model can be written back as exactly the graph it
came from (same nodes, same names), only with other values.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from onnxprune.atomic import write_bytes
from onnxprune.errors import OnnxPruneError, OptionError

MIN_OPSET = 11
MAX_DIM = 2**31 - 1  # a dimension beyond this is a typo, and overflows products of dims
CHECK_LIMIT = 256 << 20  # models up to this size also go through onnx.checker
PROTOBUF_LIMIT = 2**31 - 2**20  # leave room for the non-weight part of the message


@dataclass
class Derived:
    """A weight the exporter reshaped, transposed or cast at run time, folded at load time.

    Writing the original graph back needs the inverse: the source's values from the folded ones.
    """

    source: str
    perm: tuple[int, ...] | None  # transposed with this permutation
    shape: tuple[int, ...]  # the source's shape
    dtype: np.dtype

    def to_source(self, values: np.ndarray) -> np.ndarray:
        if self.perm is not None:
            values = np.transpose(values, np.argsort(self.perm))
        return np.asarray(values).reshape(self.shape).astype(self.dtype)


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
        return _default_opset(self.skeleton)

    def weights(self) -> dict[str, gs.Constant]:
        """Every weight of the graph by name."""
        return {name: t for name, t in self.graph.tensors().items() if isinstance(t, gs.Constant)}


def parse_input_shapes(specs: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse `NAME:1,3,640,640` items (onnxsim's and onnxslim's syntax) into a dict."""
    result: dict[str, tuple[int, ...]] = {}
    for spec in specs or []:
        name, sep, dims = spec.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.split(","))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(not 0 < d <= MAX_DIM for d in shape):
            raise OptionError(f"{{input_shapes}} {spec!r}: expected NAME:D0,D1,... with integers from 1 to {MAX_DIM}")
        result[name] = shape
    return result


def read_proto(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file with its external data, refusing anything that is not a readable model."""
    path = Path(path)
    if not path.is_file():
        raise OnnxPruneError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise OnnxPruneError(f"{path}: file is empty")
    from onnxprune.secure import ensure_plain_model

    ensure_plain_model(path, "decrypt it first")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxPruneError(f"{path}: not an ONNX model ({_first_line(exc)})") from None
    if not proto.graph.node:
        raise OnnxPruneError(f"{path}: not an ONNX model (no graph nodes; truncated or another format)")
    _load_external_data(proto, path)
    return proto


def load(path: str | os.PathLike, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Model:
    """Read a model file into a `Model` with weights lifted and shapes inferred at batch 1."""
    return from_proto(read_proto(path), input_shapes, Path(path), owned=True)


def from_proto(
    proto: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    path: Path | None = None,
    owned: bool = False,
) -> Model:
    """Build a `Model` from a ModelProto. With `owned`, the proto itself becomes the skeleton (its weight
    bytes are stripped, which saves a copy of every weight); otherwise it is left untouched."""
    from onnxprune.graph.shapes import infer_shapes

    if not owned:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
    where = str(path) if path else "model"
    check_tensors(proto, where)
    check_graph(proto, where)
    opset = _default_opset(proto)
    if opset < MIN_OPSET:
        raise OnnxPruneError(
            f"{where}: opset {opset} is older than {MIN_OPSET}; convert it first "
            f"(onnx.version_converter.convert_version(model, {MIN_OPSET}))"
        )
    from onnxprune.graph.runtime import check_supported

    check_supported(proto, where)
    _check_with_onnx(proto, where)
    fixed = _fix_input_shapes(proto, input_shapes or {}, where)
    shapes = infer_shapes(proto, fixed, where)
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:  # noqa: BLE001 - the importer raises many types on malformed graphs
        raise OnnxPruneError(f"{where}: cannot import graph ({_first_line(exc)})") from None
    # The importer keeps `proto.opset_import` itself, which keeps the whole protobuf (every weight's
    # bytes) alive; to_proto() restores the opsets from the skeleton instead.
    graph.import_domains = None
    derived = _lift_weights(graph)
    _check_conv_channels(graph, shapes, where)
    _load_values_and_strip(graph, proto)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)  # a fresh message: the stripped one still holds the weights' memory
    del proto
    return Model(graph=graph, skeleton=skeleton, input_shapes=fixed, shapes=shapes, path=path, derived=derived)


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
    for name, tensor in weight_tensors(proto).items():
        if name not in weights and name not in values:
            continue  # not a weight the graph uses: the skeleton kept its bytes
        array = values.get(name)
        if array is None:
            array = weights[name].values
        tensor.CopyFrom(numpy_helper.from_array(np.asarray(array, dtype=_np_dtype(tensor)), tensor.name))
    return proto


def save(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically; models over 2 GB get one external data file beside them."""
    path = Path(path)
    if proto.ByteSize() < PROTOBUF_LIMIT:
        write_bytes(path, proto.SerializeToString())
        return
    data_name = data_path(path).name
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        onnx.save_model(
            proto, os.path.join(tmp, path.name), save_as_external_data=True,
            all_tensors_to_one_file=True, location=data_name, size_threshold=1024,
        )
        os.replace(os.path.join(tmp, data_name), path.parent / data_name)
        os.replace(os.path.join(tmp, path.name), path)


def data_path(path: str | os.PathLike) -> Path:
    """Where `save` puts the weights of a model over 2 GB: `NAME.data` beside it (an output too)."""
    return Path(f"{path}.data")


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write a `Model` as the graph it came from, with its current weight values."""
    save(with_weights(model), path)


# --- loading details -------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _np_dtype(tensor: onnx.TensorProto) -> np.dtype:
    return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read every externally stored tensor (subgraphs and functions included) into the proto.

    Each file is found by `resolve_location`, the one check every reader of external data uses, so a
    location can only name a regular file inside the model's folder, never a path relative to the cwd.
    """
    from onnxprune.secure.external import resolve_location

    for tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        where = f"{path}: tensor {tensor.name!r}"
        info = {e.key: e.value for e in tensor.external_data}
        real = resolve_location(path.parent, info.get("location", ""), where)
        try:
            offset = int(info.get("offset") or 0)
            size = real.stat().st_size
            length = int(info["length"]) if info.get("length") else size - offset
        except ValueError:
            raise OnnxPruneError(f"{where}: external data offset or length is not an integer") from None
        if offset < 0 or length < 0 or offset + length > size:
            raise OnnxPruneError(f"{where}: external data [{offset}, {offset + length}) lies outside "
                                 f"{info['location']!r} ({size} bytes)")
        with open(real, "rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


_PACKED_BITS = {getattr(onnx.TensorProto, name): bits for name, bits in
                (("INT4", 4), ("UINT4", 4), ("FLOAT4E2M1", 4), ("INT2", 2), ("UINT2", 2)) if hasattr(onnx.TensorProto, name)}


def check_tensors(proto: onnx.ModelProto, where: str) -> None:
    """Refuse a tensor whose stored data does not hold exactly as many values as its dims say.

    Without this, a short or long initializer surfaces later as an obscure failure deep in numpy or
    onnxruntime; here it is named. Tensors still stored externally are checked when they are read.
    """
    for tensor in all_tensors(proto):
        if any(d < 0 for d in tensor.dims):
            raise OnnxPruneError(f"{where}: tensor {tensor.name!r} has a negative dimension {list(tensor.dims)}")
        kind = tensor.data_type
        if kind in (onnx.TensorProto.UNDEFINED, onnx.TensorProto.STRING) or tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(kind).itemsize
            field_name = onnx.helper.tensor_dtype_to_field(kind)
        except (KeyError, ValueError, TypeError):
            raise OnnxPruneError(f"{where}: tensor {tensor.name!r} has an unknown data type {kind}") from None
        count = int(np.prod(tensor.dims, dtype=np.float64))
        if tensor.HasField("raw_data"):
            stored, expected = len(tensor.raw_data), (count * _PACKED_BITS.get(kind, 8 * itemsize) + 7) // 8
        elif kind in _PACKED_BITS:
            continue
        else:
            complex_parts = 2 if kind in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128) else 1
            stored, expected = len(getattr(tensor, field_name)), count * complex_parts
        if stored != expected:
            raise OnnxPruneError(f"{where}: tensor {tensor.name!r} holds {stored} "
                                 f"{'bytes' if tensor.HasField('raw_data') else 'values'} where its dims "
                                 f"{list(tensor.dims)} need {expected}")


def check_graph(proto: onnx.ModelProto, where: str) -> None:
    """Refuse a top graph that is not a DAG of uniquely named tensors, each produced before it is read.

    Node order is not required (the importer sorts); a cycle, a name produced twice, or an input that
    nothing produces is the model's fault and is named here rather than failing deep inside a rule.
    """
    graph = proto.graph
    if graph.sparse_initializer:
        raise OnnxPruneError(f"{where}: sparse initializer {graph.sparse_initializer[0].values.name!r} is not "
                             "supported; store it dense")
    produced: dict[str, str] = {}
    for name in [i.name for i in graph.input] + [t.name for t in graph.initializer]:
        produced.setdefault(name, "a graph input")
    producers: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for out in (o for o in node.output if o):
            if out in produced or out in producers:
                raise OnnxPruneError(f"{where}: tensor {out!r} is produced twice (node {node.name or node.op_type!r})")
            producers[out] = index
    for node in graph.node:
        for name in (i for i in node.input if i):
            if name not in produced and name not in producers:
                raise OnnxPruneError(f"{where}: node {node.name or node.op_type!r} reads {name!r}, which nothing produces")
    for out in graph.output:
        if out.name not in produced and out.name not in producers:
            raise OnnxPruneError(f"{where}: graph output {out.name!r} is produced by no node")
    _refuse_cycles(graph, producers, where)


def _check_with_onnx(proto: onnx.ModelProto, where: str) -> None:
    """ONNX's own checker, for what the checks above do not cover (attributes, IR rules, value infos).

    Skipped above CHECK_LIMIT bytes: the checker works on a serialized copy, and a second copy of a big
    model is what loading avoids everywhere else; the structure checks above still apply to those.
    """
    if proto.ByteSize() > CHECK_LIMIT:
        return
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, UnicodeDecodeError, ValueError) as exc:  # names that are not UTF-8
        text = (str(exc).strip().splitlines() or ["invalid"])[0]
        raise OnnxPruneError(f"{where}: not a valid ONNX model ({text[:300]})") from None


def _refuse_cycles(graph: onnx.GraphProto, producers: dict[str, int], where: str) -> None:
    """Kahn's algorithm over node -> node edges of the top graph."""
    waiting = [0] * len(graph.node)
    readers: list[list[int]] = [[] for _ in graph.node]
    for index, node in enumerate(graph.node):
        sources = {producers[i] for i in node.input if i in producers}
        waiting[index] = len(sources)
        for source in sources:
            readers[source].append(index)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        index = ready.pop()
        done += 1
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if done != len(graph.node):
        stuck = next(graph.node[i] for i, count in enumerate(waiting) if count > 0)
        raise OnnxPruneError(f"{where}: the graph has a cycle (through node {stuck.name or stuck.op_type!r})")


def _check_conv_channels(graph: gs.Graph, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Refuse a Conv whose weight disagrees with its input's channels: onnxruntime would fail only on a run."""
    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose") or len(node.inputs) < 2:
            continue
        weight, shape = node.inputs[1], shapes.get(node.inputs[0].name)
        if not isinstance(weight, gs.Constant) or shape is None or len(shape) < 2 or weight.values.ndim < 2:
            continue
        group = int(node.attrs.get("group", 1))
        expected = weight.values.shape[0] if node.op == "ConvTranspose" else weight.values.shape[1] * group
        if shape[1] != expected:
            raise OnnxPruneError(f"{where}: {node.op} {node.name!r} reads {shape[1]} channels but its weight "
                                 f"{weight.name!r} {list(weight.values.shape)} (group {group}) expects {expected}")


def all_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every TensorProto of a model: initializers, sparse ones, attributes, in subgraphs and functions."""
    found: list[onnx.TensorProto] = []
    graphs = [proto.graph]
    node_lists = [list(f.node) for f in proto.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            found.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                found.extend((sparse.values, sparse.indices))
            node_lists.append(list(graph.node))
            continue
        for node in node_lists.pop():
            for attr in node.attribute:
                found.extend([attr.t] if attr.HasField("t") else [])
                found.extend(attr.tensors)
                for sparse in [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []:
                    found.extend((sparse.values, sparse.indices))
                for sparse in attr.sparse_tensors:
                    found.extend((sparse.values, sparse.indices))
                graphs.extend([attr.g] if attr.HasField("g") else [])
                graphs.extend(attr.graphs)
    return found


def _fix_input_shapes(
    proto: onnx.ModelProto, given: dict[str, tuple[int, ...]], where: str
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes at batch 1: dynamic batch becomes 1, other dynamic dims must be given."""
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        names = ", ".join(i.name for i in inputs)
        raise OptionError(f"{{input_shapes}} names {sorted(unknown)}, but the model's inputs are: {names}")
    fixed: dict[str, tuple[int, ...]] = {}
    for inp in inputs:
        if not inp.type.HasField("tensor_type"):
            raise OnnxPruneError(f"{where}: input {inp.name!r} is not a tensor")
        dims = inp.type.tensor_type.shape.dim
        if inp.name in given:
            shape = given[inp.name]
            if len(shape) != len(dims) or any(
                d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != s for d, s in zip(dims, shape)
            ):
                declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
                raise OptionError(f"{{input_shapes}} {inp.name}:{list(shape)} does not fit its declared shape {declared}")
            fixed[inp.name] = tuple(shape)
            continue
        shape = []
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > MAX_DIM:
                raise OnnxPruneError(f"{where}: input {inp.name!r} declares dimension {d.dim_value} at axis {axis}, "
                                     f"over {MAX_DIM}")
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(d.dim_value)
            elif axis == 0:
                shape.append(1)
            else:
                label = d.dim_param or "?"
                raise OnnxPruneError(
                    f"{where}: input {inp.name!r} has a dynamic dimension {label!r} at axis {axis}; "
                    f"pass --input-shape {inp.name}:1,..."
                )
        fixed[inp.name] = tuple(shape)
    return fixed


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


def _lift_weights(graph: gs.Graph) -> dict[str, Derived]:
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
            derived[out.name] = Derived(source.name, folded[1], tuple(source.values.shape), source.values.dtype)
            if source.name in derived:  # a chain: keep pointing at the original initializer
                first = derived.pop(source.name)
                derived[out.name] = Derived(first.source, None, first.shape, first.dtype) if folded[1] is None \
                    and first.perm is None else derived[out.name]
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


def _load_values_and_strip(graph: gs.Graph, proto: onnx.ModelProto) -> None:
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
