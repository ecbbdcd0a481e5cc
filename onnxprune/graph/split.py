"""Cut a model where one channel group's change enters it, so analysis reruns only what the change reaches.

Every entry of a group's sensitivity row changes the same places of the graph; everything upstream of
them computes the same activations whatever the ratio. `split` cuts the graph there: the *prefix*
(graph inputs -> cut tensors) runs once per batch and its outputs are reused by every ratio; the
*suffix* (cut tensors -> the outputs the change reaches) runs once per entry.

A change enters the suffix in one of two ways:
- masks: a `Mul` by a 0/1 mask (a graph input) after each tensor where the sparse model's removed
  channels are exact zeros (`analysis.entries.mask_points` says where). One session serves every ratio of the
  group; an entry only feeds other masks.
- weights: the group's zeroed weights are replaced in the suffix, one session per entry.

This module works on ONNX protobuf on purpose: it cuts exactly the graph `io.with_weights` writes, the
same nodes and tensor names a sparse model has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class MaskPoint:
    """Axis `axis` of activation `tensor` (of rank `rank`, `size` long on that axis) is multiplied by a mask."""

    tensor: str
    axis: int
    size: int
    rank: int
    dtype: str  # numpy dtype name of the tensor

    def shape(self) -> list[int]:
        shape = [1] * self.rank
        shape[self.axis] = self.size
        return shape

    def mask(self, zeroed: np.ndarray) -> np.ndarray:
        """The 0/1 mask that zeroes `zeroed` (indices along the axis), shaped to broadcast."""
        values = np.ones(self.size, dtype=self.dtype)
        values[np.asarray(zeroed, dtype=np.int64)] = 0
        return values.reshape(self.shape())


@dataclass
class Split:
    """A model cut in two around the tensors a change touches.

    The prefix computes `cut` and `passthrough` from the graph inputs (or from any baseline tensors
    already at hand); the suffix maps `cut` (plus the masks, if any) to `changed_outputs`.
    """

    cut: list[str]
    passthrough: list[str]  # graph outputs the change does not reach: read off the prefix
    changed_outputs: list[str]
    masks: dict[str, MaskPoint]  # suffix input name -> where it is applied
    graph_inputs: list[str]
    _graph: onnx.GraphProto
    _nodes: list[int]
    _like: onnx.ModelProto

    def prefix_outputs(self, known: set[str] = frozenset()) -> list[str]:
        """What a prefix must compute: the cut and passthrough tensors not already given."""
        return [t for t in self.cut + self.passthrough if t not in self.graph_inputs and t not in known]

    def prefix(self, known: dict[str, np.dtype] | None = None) -> onnx.ModelProto | None:
        """The model computing `prefix_outputs` from the graph inputs and the `known` tensors (name ->
        dtype): baseline activations kept from an earlier cut, so only the part in between runs."""
        known = known or {}
        outputs = self.prefix_outputs(set(known))
        if not outputs:
            return None
        initializers = {t.name for t in self._graph.initializer}
        nodes = [self._graph.node[i] for i in
                 _needed(list(self._graph.node), outputs, initializers | set(self.graph_inputs) | set(known))]
        used = {t for n in nodes for t in _node_inputs(n)}
        inputs = [i for i in self._graph.input if i.name in used and i.name in self.graph_inputs]
        inputs += [_typed(name, dtype) for name, dtype in known.items() if name in used]
        declared = {o.name: o for o in self._graph.output}
        outs = [declared.get(name, onnx.ValueInfoProto(name=name)) for name in outputs]
        weights = [t for t in self._graph.initializer if t.name in used]
        return _model(helper.make_graph(nodes, "prefix", inputs, outs, weights), self._like)

    def suffix_nodes(self) -> list[str]:
        """Names of the nodes each entry runs (e.g. to count the MACs prefix caching saves)."""
        return [self._graph.node[i].name for i in self._nodes]

    def suffix(self, dtypes: dict[str, np.dtype], values: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
        """The suffix model; `dtypes` of the cut tensors (known once the prefix ran), `values` replace weights."""
        values = values or {}
        nodes = []
        for i in self._nodes:
            node = self._graph.node[i]
            if node.op_type == "Constant" and node.output[0] in values:
                node = helper.make_node("Constant", [], [node.output[0]], name=node.name,
                                        value=numpy_helper.from_array(values[node.output[0]], node.output[0]))
            nodes.append(node)
        used = {name for node in nodes for name in _node_inputs(node)}
        initializers = []
        for init in self._graph.initializer:
            if init.name in used:
                array = values.get(init.name)
                initializers.append(init if array is None else numpy_helper.from_array(
                    np.asarray(array, dtype=helper.tensor_dtype_to_np_dtype(init.data_type)), init.name))
        inputs = [_typed(name, dtypes[name]) for name in self.cut]
        inputs += [_typed(name, np.dtype(point.dtype), point.shape()) for name, point in self.masks.items()]
        outputs = [o for o in self._graph.output if o.name in set(self.changed_outputs)]
        graph = helper.make_graph(nodes, "suffix", inputs, outputs, initializers)
        return _model(graph, self._like)


def split(proto: onnx.ModelProto, masks: list[MaskPoint] | None = None,
          weights: set[str] | None = None) -> Split:
    """Cut `proto` before the first node that `masks` (inserted Muls) or changed `weights` reach."""
    graph, mask_inputs = _insert_masks(proto.graph, masks or [])
    changed = set(mask_inputs) | set(weights or ())
    nodes = list(graph.node)
    initializers = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializers]
    data = set(graph_inputs)  # tensors that depend on the data
    reached = set(changed)  # tensors the change reaches
    touched: list[int] = []
    for i, node in enumerate(nodes):
        ins = _node_inputs(node)
        if any(t in data for t in ins):
            data.update(node.output)
        source = node.op_type == "Constant" and node.output[0] in changed
        if source or any(t in reached for t in ins):
            reached.update(node.output)
            touched.append(i)
    cut: list[str] = []
    for i in touched:
        for t in _node_inputs(nodes[i]):
            if t in data and t not in reached and t not in cut:
                cut.append(t)
    outputs = [o.name for o in graph.output]
    changed_outputs = [o for o in outputs if o in reached]
    passthrough = [o for o in outputs if o not in reached]
    suffix_nodes = _needed(nodes, changed_outputs, stop=set(cut) | initializers | set(mask_inputs))
    return Split(cut, passthrough, changed_outputs, mask_inputs, graph_inputs, graph, suffix_nodes, proto)


def _insert_masks(graph: onnx.GraphProto, masks: list[MaskPoint]) -> tuple[onnx.GraphProto, dict[str, MaskPoint]]:
    """A copy of the graph with `Mul(tensor, mask)` after each mask point, its readers reading the product."""
    if not masks:
        return graph, {}
    taken = {t for n in graph.node for t in list(n.input) + list(n.output)} | {i.name for i in graph.input}
    renamed: dict[str, str] = {}
    after: dict[str, list[onnx.NodeProto]] = {}
    inputs: dict[str, MaskPoint] = {}
    for k, point in enumerate(masks):
        source = renamed.get(point.tensor, point.tensor)
        name, masked = _fresh(f"{point.tensor}::mask{k}", taken), _fresh(f"{point.tensor}::masked{k}", taken)
        inputs[name] = point
        after.setdefault(point.tensor, []).append(helper.make_node("Mul", [source, name], [masked],
                                                                   name=f"{point.tensor}::apply_mask{k}"))
        renamed[point.tensor] = masked
    new = onnx.GraphProto()
    new.name = graph.name
    new.input.extend(graph.input)
    new.output.extend(graph.output)
    new.initializer.extend(graph.initializer)
    for node in graph.node:
        new.node.append(_rename_inputs(node, renamed))
        for t in node.output:
            new.node.extend(after.get(t, []))
    return new, inputs


def _rename_inputs(node: onnx.NodeProto, renamed: dict[str, str]) -> onnx.NodeProto:
    if not any(t in renamed for t in node.input):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for j, t in enumerate(copy.input):
        copy.input[j] = renamed.get(t, t)
    return copy


def _fresh(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def _node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope names a subgraph (If, Loop, Scan) reads."""
    names = [t for t in node.input if t]
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            names.extend(_outer_names(sub))
    return names


def _outer_names(graph: onnx.GraphProto) -> list[str]:
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    names = []
    for node in graph.node:
        names.extend(t for t in _node_inputs(node) if t not in defined)
        defined.update(node.output)
    names.extend(o.name for o in graph.output if o.name not in defined)
    return names


def _needed(nodes: list[onnx.NodeProto], targets: list[str], stop: set[str]) -> list[int]:
    """Indices (in graph order) of the nodes needed to compute `targets` from the `stop` tensors."""
    producer = {t: i for i, n in enumerate(nodes) for t in n.output}
    keep: set[int] = set()
    stack = [t for t in targets if t not in stop]
    seen = set(stack)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in keep:
            continue
        keep.add(i)
        for t in _node_inputs(nodes[i]):
            if t not in stop and t not in seen:
                seen.add(t)
                stack.append(t)
    return sorted(keep)


def _typed(name: str, dtype: np.dtype, shape: list[int] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def _model(graph: onnx.GraphProto, like: onnx.ModelProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(like.opset_import), ir_version=like.ir_version)
    model.functions.extend(like.functions)
    return model
