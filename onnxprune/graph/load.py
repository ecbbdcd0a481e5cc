"""Load models: the only way ONNX protobuf becomes the graph IR.

Every weight ends up a `gs.Constant`, wherever the exporter put it: initializers, `Constant` nodes
(PaddlePaddle exports have no initializers), behind `Identity`, `Cast`, `Transpose` or `Reshape` nodes
(`lift`). External data is read only from the model's folder; broken models are refused (`check`).
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError

from onnxprune.errors import OnnxPruneError, OptionError, first_line
from onnxprune.graph.check import (
    MAX_DIM,
    all_tensors,
    check_conv_channels,
    check_graph,
    check_tensors,
    check_with_onnx,
)
from onnxprune.graph.lift import lift_weights, load_values_and_strip
from onnxprune.graph.model import Model, opset_of
from onnxprune.graph.runtime import check_supported
from onnxprune.graph.shapes import infer_shapes
from onnxprune.secure.external import resolve_location
from onnxprune.secure.files import ensure_plain_model

MIN_OPSET = 11


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
    ensure_plain_model(path, "decrypt it first")
    try:
        # always the binary format: onnx would pick a text parser by the file's extension (.json, .txt)
        proto = onnx.load(str(path), format="protobuf", load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxPruneError(f"{path}: not an ONNX model ({first_line(exc)})") from None
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
    if not owned:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)
        proto = copy
    where = str(path) if path else "model"
    check_tensors(proto, where)
    check_graph(proto, where)
    opset = opset_of(proto)
    if opset < MIN_OPSET:
        raise OnnxPruneError(
            f"{where}: opset {opset} is older than {MIN_OPSET}; convert it first "
            f"(onnx.version_converter.convert_version(model, {MIN_OPSET}))"
        )
    check_supported(proto, where)
    check_with_onnx(proto, where)
    fixed = _fix_input_shapes(proto, input_shapes or {}, where)
    shapes = infer_shapes(proto, fixed, where)
    try:
        graph = gs.import_onnx(proto)
    except Exception as exc:  # noqa: BLE001 - the importer raises many types on malformed graphs
        raise OnnxPruneError(f"{where}: cannot import graph ({first_line(exc)})") from None
    # The importer keeps `proto.opset_import` itself, which keeps the whole protobuf (every weight's
    # bytes) alive; to_proto() restores the opsets from the skeleton instead.
    graph.import_domains = None
    derived = lift_weights(graph)
    check_conv_channels(graph, shapes, where)
    load_values_and_strip(graph, proto)
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(proto)  # a fresh message: the stripped one still holds the weights' memory
    del proto
    return Model(graph=graph, skeleton=skeleton, input_shapes=fixed, shapes=shapes, path=path, derived=derived)


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read every externally stored tensor (subgraphs and functions included) into the proto.

    Each file is found by `resolve_location`, the one check every reader of external data uses, so a
    location can only name a regular file inside the model's folder, never a path relative to the cwd.
    """
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
