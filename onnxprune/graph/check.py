"""Refuse broken models at load time, each with a one-line reason: tensors whose data does not match
their dims, cycles, dangling inputs, what onnx.checker finds, convs whose channels do not add up."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.errors import OnnxPruneError

MAX_DIM = 2**31 - 1  # a dimension beyond this is a typo, and overflows products of dims
CHECK_LIMIT = 256 << 20  # models up to this size also go through onnx.checker


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


def check_with_onnx(proto: onnx.ModelProto, where: str) -> None:
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


def check_conv_channels(graph: gs.Graph, shapes: dict[str, tuple[int, ...]], where: str) -> None:
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
