"""Channel groups: which channels of which tensors must be removed together.

Every channel of every tensor axis a rule touches is an *atom*; each bundle a rule returns is a small
index space whose atoms are joined with the atoms of the axes tied to it. The connected components
are the *channels* a pruner can remove (one component = one channel, however many tensors it spans).
Channels that touch exactly the same tensor axes form a `Group` — for a Conv->BN->ReLU->Conv chain,
the first conv's output channels, the BN's parameters and the second conv's input columns.

A group is unprunable when any of its channels reaches an axis that must not change (a graph output,
an operator without a rule, an axis normalized by LayerNorm, ...), or when a removed channel would not
be zero where another layer reads it (e.g. after a Sigmoid): then sparse and slim models would differ.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.errors import OnnxPruneError
from onnxprune.graph.model import Model
from onnxprune.graph.shapes import shape_values
from onnxprune.rules import (
    CONTRACT,
    IN,
    KEEP,
    OUT,
    WEIGHT_ROLES,
    ZEROED_ROLES,
    Bundle,
    Context,
    Port,
    Stop,
    entry_for,
    fold_view,
)
from onnxprune.rules.values import inputs_of, space_values, unread_nonzero

Key = tuple[str, int]  # (tensor name, axis)


@dataclass
class Member:
    """One tensor axis of a group: `index[i]` along the axis belongs to group channel `channel[i]`."""

    tensor: str
    axis: int
    size: int
    index: np.ndarray
    channel: np.ndarray
    role: str | None = None  # weights: out / affine (zeroed when sparse), in / keep (left as is);
    # activations: contract (summed over by a product of two activations) or None

    @property
    def is_weight(self) -> bool:
        """True for the weights pruning slices (an activation, even one a layer reads, is not one)."""
        return self.role in WEIGHT_ROLES


@dataclass
class Compensation:
    """A layer that reads removed channels whose value is a nonzero constant (f(0) != 0 upstream).

    Slim pruning folds `values[i] * weight column i` into the layer's bias: exact for the layers whose
    registry entry has a `fold` view (1x1 convs without padding, Gemm), which see the constant at every
    position.
    """

    node: int  # index in the graph's (topologically sorted) node list
    tensor: str
    axis: int
    values: np.ndarray  # the removed channel's value at each position of the axis (NaN: not needed)


@dataclass
class Group:
    """Channels that are removed together, with every tensor axis they live on.

    Example: conv1 -> bn1 -> relu -> conv2 gives one group with `channels` = conv1's output channels and
    members conv1.weight axis 0 (out), conv1.bias (out), bn1 scale/bias (affine), mean/var (keep), the
    activations on axis 1, and conv2.weight axis 1 (in).
    """

    id: str
    channels: int
    members: list[Member]
    reason: str | None = None  # why it cannot be pruned; None when it can
    leader: str = ""  # node whose output channels these are
    compensations: list[Compensation] = field(default_factory=list)

    @property
    def prunable(self) -> bool:
        return self.reason is None

    def weights(self) -> list[Member]:
        return [m for m in self.members if m.is_weight]


@dataclass
class _Axis:
    key: Key
    base: int
    size: int
    role: str | None = None
    nodes: list[int] = field(default_factory=list)  # topological indices of the nodes that touch it


@dataclass
class _Placed:
    """A bundle a rule returned, with where its index space sits among the atoms."""

    node: gs.Node
    bundle: Bundle
    base: int


def find_groups(model: Model, attention: str = "dims") -> list[Group]:
    """All channel groups of the model, prunable or not, in the order their producers run.

    `attention` says what MatMul attention loses: "dims" the same head_dim positions in every head (the
    finest unit), "heads" whole heads (fewer, smaller score matrices).
    """
    if attention not in ("dims", "heads"):
        raise OnnxPruneError(f"attention {attention!r}: choose dims or heads")
    return _GroupFinder(model, attention).run()


class _GroupFinder:
    def __init__(self, model: Model, attention: str = "dims"):
        self.graph = model.graph
        self.ctx = Context(model.shapes, model.opset, shape_values(model.graph, model.shapes), attention)
        self.tensors = self.graph.tensors()
        self.axes: dict[Key, _Axis] = {}
        self.stops: dict[Key, str] = {}
        self.placed: list[_Placed] = []
        self.compensations: list[Compensation] = []
        self.total = 0
        self.graph_outputs = {t.name for t in self.graph.outputs}
        self.graph_inputs = {t.name for t in self.graph.inputs}
        self.node_index = {id(node): i for i, node in enumerate(self.graph.nodes)}

    def run(self) -> list[Group]:
        self._walk()
        labels = self._components()
        failures = self._check_values(labels)
        return self._groups(labels, failures)

    # -- 1. walk from every weight that produces channels, through the rules -------------------------

    def _seeds(self) -> list[Key]:
        seeds = []
        for node in self.graph.nodes:
            rule = entry_for(node)
            for index, axis in rule.seeds(node) if rule is not None and rule.seeds is not None else []:
                weight = node.inputs[index] if index < len(node.inputs) else None
                if isinstance(weight, gs.Constant) and weight.values.ndim >= 2:
                    seeds.append((weight.name, axis % weight.values.ndim))
        return seeds

    def _walk(self) -> None:
        queue = deque(self._seeds())
        while queue:
            key = queue.popleft()
            if key in self.axes:
                continue
            tensor = self.tensors[key[0]]
            shape = self.ctx.shape(tensor)
            size = shape[key[1]] if shape is not None else 0
            self.axes[key] = _Axis(key, self.total, size)
            self.total += size
            if shape is None:
                self._stop(key, f"shape of '{key[0]}' is unknown")
                continue
            if key[0] in self.graph_outputs:
                self._stop(key, f"'{key[0]}' is a model output")
            if key[0] in self.graph_inputs:
                self._stop(key, f"'{key[0]}' is a model input")
            for node, port in _ports(tensor):
                for tied in self._apply(node, port, key):
                    queue.append(tied)

    def _apply(self, node: gs.Node, port: Port, key: Key) -> list[Key]:
        index = self.node_index.get(id(node))
        if index is None:  # a node of an If/Loop/Scan body reads it from the outer scope
            self._stop(key, f"'{key[0]}' is read inside a subgraph ({node.op} '{node.name}')")
            return []
        self.axes[key].nodes.append(index)
        rule = entry_for(node)
        if rule is None:
            self._stop(key, f"no channel rule for {node.op} '{node.name}'")
            return []
        try:
            result = rule.bundles(node, port, key[1], self.ctx)
        except Exception as exc:  # noqa: BLE001 - an odd graph must not stop the others: this group stops
            result = Stop(f"internal error in the {node.op} rule at '{node.name}': {type(exc).__name__}: {exc}")
        if isinstance(result, Stop):
            self._stop(key, result.reason)
            return []
        tied = []
        for bundle in result:
            self.placed.append(_Placed(node, bundle, self.total))
            self.total += bundle.size
            tied.extend((t.tensor.name, t.axis) for t in bundle.ties)
        return tied

    def _stop(self, key: Key, reason: str) -> None:
        self.stops.setdefault(key, reason)

    # -- 2. connected components of atoms --------------------------------------------------------

    def _components(self) -> np.ndarray:
        us, vs = [], []
        for placed in self.placed:
            for t in placed.bundle.ties:
                axis = self.axes[(t.tensor.name, t.axis)]
                if t.role is not None:
                    if KEEP in (axis.role, t.role) and {axis.role, t.role} & set(ZEROED_ROLES):
                        self._stop(axis.key, f"weight '{axis.key[0]}' is zeroed for one node and kept for another")
                    axis.role = _merge_role(axis.role, t.role)
                valid = t.pairs[:, 1] < axis.size
                us.append((placed.base + t.pairs[valid, 0]).astype(self.atom_dtype))
                vs.append((axis.base + t.pairs[valid, 1]).astype(self.atom_dtype))
        if not us:
            return np.arange(self.total)
        u, v = np.concatenate(us), np.concatenate(vs)
        del us, vs
        return connected_components(self.total, u, v)

    @property
    def atom_dtype(self) -> type:
        return np.int32 if self.total < 2**31 else np.int64

    # -- 3. is every removed channel zero where a layer reads it? -----------------------------------

    def _check_values(self, labels: np.ndarray) -> dict[int, str]:
        values = {key: np.full(axis.size, np.nan) for key, axis in self.axes.items()}
        failures: dict[int, str] = {}
        by_node: dict[int, list[_Placed]] = {}
        for placed in self.placed:
            by_node.setdefault(id(placed.node), []).append(placed)
        for node in self.graph.nodes:
            for placed in by_node.get(id(node), []):
                space = space_values(entry_for(node), node, placed.bundle, values)
                for t in placed.bundle.ties:
                    if any(t.tensor is o for o in node.outputs):
                        target = values[(t.tensor.name, t.axis)]
                        valid = t.pairs[:, 1] < len(target)  # as in _components: an axis of unknown size
                        target[t.pairs[valid, 1]] = space[t.pairs[valid, 0]]
                bad = unread_nonzero(node, placed.bundle, values)
                if np.any(bad) and np.all(np.isfinite(bad)) and fold_view(node) is not None:
                    reader = next(t for t in inputs_of(node, placed.bundle) if not isinstance(t.tensor, gs.Constant))
                    key = (reader.tensor.name, reader.axis)
                    index = self.node_index[id(node)]
                    if not any(c.node == index and (c.tensor, c.axis) == key for c in self.compensations):
                        self.compensations.append(Compensation(index, *key, values[key].copy()))
                    continue
                for s in np.flatnonzero(bad):
                    failures.setdefault(int(labels[placed.base + s]), _value_reason(node, bad[s]))
        return failures

    # -- 4. groups: channels that touch the same tensor axes -------------------------------------

    def _groups(self, labels: np.ndarray, failures: dict[int, str]) -> list[Group]:
        keys = self.keys = list(self.axes)
        touched: dict[int, list[int]] = {}
        for k, key in enumerate(keys):
            axis = self.axes[key]
            for label in np.unique(labels[axis.base: axis.base + axis.size]):
                touched.setdefault(int(label), []).append(k)
        by_signature: dict[tuple[int, ...], list[int]] = {}
        for label, ks in touched.items():
            by_signature.setdefault(tuple(ks), []).append(label)
        groups = [self._group(list(sig), lab, labels, failures) for sig, lab in by_signature.items()]
        groups = [g for g in groups if g is not None]
        groups.sort(key=lambda g: g[0])
        return _name_groups([g[1] for g in groups])

    def _group(self, signature: list[int], group_labels: list[int], labels: np.ndarray,
               failures: dict[int, str]) -> tuple[int, Group] | None:
        keys = [self.keys[k] for k in signature]
        axes = [self.axes[key] for key in keys]
        leader = next((a for a in axes if a.role == OUT), None)
        if leader is None and not any(a.role in ZEROED_ROLES for a in axes):
            return None  # no weights make these channels: not a pruning unit (inputs, shape tensors, ...)
        order_axis = leader or axes[0]
        wanted = np.asarray(sorted(group_labels))
        first_pos = {}
        span = labels[order_axis.base: order_axis.base + order_axis.size]
        for pos, label in enumerate(span):
            first_pos.setdefault(int(label), pos)
        ordered = sorted(wanted.tolist(), key=lambda lab: first_pos.get(lab, 1 << 60))
        channel_of = {lab: i for i, lab in enumerate(ordered)}
        members = []
        for axis in axes:
            span = labels[axis.base: axis.base + axis.size]
            index = np.flatnonzero(np.isin(span, wanted))
            channel = np.array([channel_of[int(lab)] for lab in span[index]], dtype=np.int64)
            members.append(Member(axis.key[0], axis.key[1], axis.size, index, channel, axis.role))
        reason = next((self.stops[k] for k in keys if k in self.stops), None)
        reason = reason or next((failures[lab] for lab in ordered if lab in failures), None)
        group_keys = set(keys)
        compensations = [c for c in self.compensations if (c.tensor, c.axis) in group_keys]
        producers = [a for a in axes if a.role == OUT] or axes
        position = min(min(a.nodes, default=len(self.node_index)) for a in producers)
        node = self.graph.nodes[position] if position < len(self.graph.nodes) else None
        name = (node.name if node is not None else "") or order_axis.key[0]
        return position, Group("", len(ordered), members, reason, name, compensations)


def _ports(tensor: gs.Tensor) -> list[tuple[gs.Node, Port]]:
    ports, seen = [], set()
    for node in list(tensor.inputs) + list(tensor.outputs):
        if id(node) in seen:
            continue
        seen.add(id(node))
        ports += [(node, Port(False, i)) for i, t in enumerate(node.outputs) if t is tensor]
        ports += [(node, Port(True, i)) for i, t in enumerate(node.inputs) if t is tensor]
    return ports


def _merge_role(old: str | None, new: str) -> str:
    """A weight tied in several ways: keeping values wins over zeroing, producing over consuming."""
    for role in (KEEP, OUT, IN, CONTRACT):
        if role in (old, new):
            return role
    return new


def _name_groups(groups: list[Group]) -> list[Group]:
    """Group ids are their producer node's name; a node split into several groups gets #1, #2, ..."""
    counts: dict[str, int] = {}
    for g in groups:
        counts[g.leader] = counts.get(g.leader, 0) + 1
    seen: dict[str, int] = {}
    for g in groups:
        n = seen[g.leader] = seen.get(g.leader, 0) + 1
        g.id = g.leader if counts[g.leader] == 1 else f"{g.leader}#{n}"
    return groups


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of each of `n` atoms: the smallest atom id connected to it through the edges (u, v)."""
    dtype = np.int32 if n < 2**31 else np.int64
    labels = np.arange(n, dtype=dtype)
    u, v = u.astype(dtype, copy=False), v.astype(dtype, copy=False)
    while True:
        lu, lv = labels[u], labels[v]
        np.minimum(lu, lv, out=lu)  # lu becomes the smaller root of each edge
        changed = False
        for roots in (labels[u], labels[v]):
            moved = lu < labels[roots]
            if moved.any():
                changed = True
                np.minimum.at(labels, roots[moved], lu[moved])
        del lu, lv
        while True:  # pointer jumping: every atom points at its root
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
        if not changed:
            return labels.astype(np.int64)


def _value_reason(node: gs.Node, value: float) -> str:
    what = "unknown" if not np.isfinite(value) else f"{value:.3g}"
    return f"removed channels would be {what}, not 0, where {node.op} '{node.name}' reads them"


__all__ = ["IN", "OUT", "Compensation", "Group", "Member", "connected_components", "find_groups"]
