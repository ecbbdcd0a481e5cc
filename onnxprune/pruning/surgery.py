"""Apply a plan: zero the channels (sparse) or remove them (slim).

Both obey the invariant of the design: the sparse and the slim model compute the same function. Sparse
zeroes every producer slice (weights, biases, BN scale and bias, per-channel constants) and keeps the
graph exactly as it was; slim deletes every slice of every member and lets the rules fix attributes and
shape inputs (depthwise group counts, Split sizes, Slice bounds, Reshape targets).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.lift import lower_quantized
from onnxprune.graph.model import Model, to_proto, with_weights
from onnxprune.graph.shapes import shape_values
from onnxprune.pruning.channels import Group, Member
from onnxprune.pruning.plan import Plan
from onnxprune.rules import ZEROED_ROLES, Context, Removed, entry_for, fold_view

Key = tuple[str, int]


def removed_slices(groups: list[Group], plan: Plan) -> list[tuple[Member, np.ndarray]]:
    """Every (member, indices along its axis) the plan removes."""
    by_id = {g.id: g for g in groups}
    slices = []
    for gid, part in plan.groups.items():
        group = by_id.get(gid)
        if group is None or group.channels != part.channels:
            raise OnnxPruneError(f"plan group {gid!r} does not match this model (re-plan on this model)")
        if not group.prunable:
            raise OnnxPruneError(f"plan group {gid!r} cannot be pruned: {group.reason}")
        for member in group.members:
            index = member.index[np.isin(member.channel, part.removed)]
            if index.size:
                slices.append((member, index))
    return slices


def zeroed_slices(model: Model, groups: list[Group], plan: Plan) -> Iterator[tuple[gs.Constant, tuple]]:
    """Every weight slice the sparse model sets to zero: (weight, index tuple into its values).

    The producer slices (weights, biases, BatchNorm scale and bias, per-channel constants) of every
    removed channel; consumer columns and statistics are left as they are.
    """
    weights = model.weights()
    for member, index in removed_slices(groups, plan):
        if member.role in ZEROED_ROLES and member.tensor in weights:
            weight = weights[member.tensor]
            where = [slice(None)] * weight.values.ndim
            where[member.axis] = index
            yield weight, tuple(where)


def sparse_values(model: Model, groups: list[Group], plan: Plan) -> dict[str, np.ndarray]:
    """New values of the weights a sparse model changes (producer slices set to zero)."""
    values: dict[str, np.ndarray] = {}
    for weight, where in zeroed_slices(model, groups, plan):
        if weight.name not in values:
            values[weight.name] = np.array(weight.values, copy=True)
        values[weight.name][where] = 0
    return values


@contextlib.contextmanager
def zeroed_in_place(model: Model, groups: list[Group], plan: Plan) -> Iterator[Model]:
    """Make `model` the sparse model for the duration of a `with` block, without copying its weights.

    Only the zeroed slices are saved (to be restored on exit, even on errors): checking a big model this
    way costs a fraction of a copy of it.
    """
    saved = []
    for weight, where in zeroed_slices(model, groups, plan):
        if not weight.values.flags.writeable:
            weight.values = np.array(weight.values)
        array = weight.values
        saved.append((array, where, array[where].copy()))
        array[where] = 0
    try:
        yield model
    finally:
        for array, where, values in reversed(saved):
            array[where] = values


def sparse(model: Model, groups: list[Group], plan: Plan) -> onnx.ModelProto:
    """The original graph with the plan's channels zeroed."""
    return with_weights(model, sparse_values(model, groups, plan))


def _compensations(model: Model, groups: list[Group], plan: Plan) -> dict[int, np.ndarray]:
    """Per layer (node index), what the removed constant channels added to each of its outputs."""
    by_id = {g.id: g for g in groups}
    folded: dict[int, np.ndarray] = {}
    for gid, part in plan.groups.items():
        group = by_id[gid]
        for comp in group.compensations:
            member = next(m for m in group.members if (m.tensor, m.axis) == (comp.tensor, comp.axis))
            positions = member.index[np.isin(member.channel, part.removed)]
            if positions.size == 0:
                continue
            contribution = fold_view(model.graph.nodes[comp.node]).offset(comp.values[positions], positions)
            folded[comp.node] = folded.get(comp.node, 0) + contribution
    return folded


def _add_to_bias(node: gs.Node, contribution: np.ndarray, removed: Removed) -> None:
    """Add a per-output contribution (over the original outputs) to the bias of a pruned layer."""
    view = fold_view(node)
    view.add_bias(np.delete(contribution, removed.of(view.weight, view.weight_axes[1])))


def pruned_shapes(shapes: dict[str, tuple[int, ...]], indices: dict[Key, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape after removing `indices` from its axes."""
    new = dict(shapes)
    for (name, axis), index in indices.items():
        if name in new:
            shape = list(new[name])
            shape[axis] -= index.size
            new[name] = tuple(shape)
    return new


def slim(model: Model, groups: list[Group], plan: Plan, norms: str = "exact") -> onnx.ModelProto:
    """A smaller model without the plan's channels."""
    return to_proto(slim_graph(model, groups, plan, norms), model.skeleton)


def slim_graph(model: Model, groups: list[Group], plan: Plan, norms: str = "exact") -> gs.Graph:
    """The IR of the slim model (the model's own graph is left as it was).

    `norms`: means and normalizations over pruned channels keep the original count ("exact": the slim
    model computes what the sparse one does) or average over the kept channels ("approximate", as
    Torch-Pruning's models do; faster for LayerNorm, but the slim model then differs from the sparse one).
    """
    folded = _compensations(model, groups, plan)
    graph = model.graph.copy()
    tensors = graph.tensors()
    indices: dict[Key, np.ndarray] = {}
    for member, index in removed_slices(groups, plan):
        key = (member.tensor, member.axis)
        indices[key] = np.union1d(indices.get(key, np.zeros(0, np.int64)), index)
    for (name, axis), index in indices.items():
        tensor = tensors[name]
        if isinstance(tensor, gs.Constant):
            tensor.values = np.delete(np.asarray(tensor.values), index, axis=axis)
    removed = Removed(indices, model.shapes)
    for index, contribution in folded.items():
        _add_to_bias(graph.nodes[index], contribution, removed)
    new_shapes = pruned_shapes(model.shapes, indices)
    ctx = Context(new_shapes, model.opset, shape_values(graph, new_shapes), norms=norms)
    for node in graph.nodes:
        rule = entry_for(node)
        if rule is not None and rule.fixup is not None:
            rule.fixup(node, removed, ctx)
    graph.nodes.extend(ctx.added)  # what fixups add: a Reshape target's own copy, an exact norm's subgraph
    keep = {t.name for t in list(graph.inputs) + list(graph.outputs)}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None
    lower_quantized(graph, model.derived, indices)  # a QDQ model stays one, its scales sliced too
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph.toposort() if ctx.added else graph
