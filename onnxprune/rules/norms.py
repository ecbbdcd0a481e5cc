"""Normalizations and means over a pruned channel axis, made exact in the slim model.

In the sparse model a removed channel is an exact zero where a normalization reads it (the tie's SUMMED
role makes `channels` check that), so the slim model can compute over the kept channels what the sparse
one computes over all of them. With r = kept / original count of the normalized elements:

- a sum or norm of zeros adds nothing (ReduceSum, ReduceSumSquare, ReduceL1, ReduceL2): nothing to fix;
- a mean over C channels is the sum over the kept ones divided by C: ReduceMean over the kept channels,
  times r (a Mul after it);
- the variance of a decomposed LayerNorm, ReduceMean((x - mean)^2), also counts every removed channel as
  (0 - mean)^2: r * ReduceMean over the kept + (1 - r) * mean^2;
- fused LayerNormalization becomes that computation as a small subgraph (there is no fused form of it);
- RMSNorm stays fused (RMSNormalization, SimplifiedLayerNormalization): mean(x^2) + eps over C is
  r * (mean over the kept + eps / r), so epsilon becomes eps / r and the scale scale / sqrt(r);
- GroupNormalization loses whole groups (each normalizes its own channels): num_groups shrinks.

With `norms="approximate"` (`Context.norms`) the fixups leave means and normalizations as they are: they
then average over the kept channels only, as the models Torch-Pruning makes do, and the slim model differs
from the sparse one (`pruning.prune` says by how much).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    AFFINE,
    SUMMED,
    Bundle,
    Context,
    Port,
    Removed,
    RuleFn,
    Stop,
    Tie,
    identity,
    ints_input,
    norm_axis,
    present,
    tie,
)

SUM_LIKE = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")  # zeros add nothing to these


# --- reductions over the channel axis -----------------------------------------------------------------


def reduced_channels(node: gs.Node, axis: int, shape: tuple[int, ...], ctx: Context) -> list[Bundle] | Stop:
    """A reduction over the channel axis: exact when removed channels add nothing (sums and norms of
    zeros) or add only to the count (means: the fixup rescales). The reduced output has no channels."""
    if node.op not in SUM_LIKE and node.op != "ReduceMean":
        return Stop(f"channels are reduced by {node.op} '{node.name}'")
    variance = node.op == "ReduceMean" and variance_of(node, ctx) is not None
    return [Bundle(shape[axis], [tie(node.inputs[0], axis, shape[axis], None if variance else SUMMED)])]


def reduce_axes(node: gs.Node, rank: int, ctx: Context) -> list[int] | None:
    """The sorted axes a Reduce* node reduces; None when they are computed at run time."""
    axes = ints_input(node, 1, "axes", ctx)
    if axes is None:
        return None
    if not axes:
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(norm_axis(a, rank) for a in axes)


def _producer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.inputs[0] if isinstance(tensor, gs.Variable) and tensor.inputs else None


def _mean_node(mean: gs.Tensor, ctx: Context) -> gs.Node | None:
    """The ReduceMean that computes `mean`, also once its fixup has put a Mul after it."""
    return ctx.memo.get((id(mean), "mean")) or _producer(mean)


def variance_of(node: gs.Node, ctx: Context) -> gs.Tensor | None:
    """The mean tensor m when `node` is ReduceMean((x - m)^2) with m = ReduceMean(x) over the same axes
    (decomposed LayerNorm's variance), else None. Its removed channels are m^2, not 0: the fixup adds them."""
    square = _producer(node.inputs[0])
    if square is None:
        return None
    if square.op == "Pow":
        exponent = ctx.const(square.inputs[1])
        if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) != 2.0:
            return None
    elif not (square.op == "Mul" and square.inputs[0] is square.inputs[1]):
        return None
    sub = _producer(square.inputs[0])
    if sub is None or sub.op != "Sub":
        return None
    x, mean = sub.inputs[0], sub.inputs[1]
    source = _mean_node(mean, ctx)
    if source is None or source.op != "ReduceMean" or source.inputs[0] is not x:
        return None
    rank = len(ctx.shape(x) or ())
    if not rank or int(source.attrs.get("keepdims", 1)) != 1:
        return None
    axes = reduce_axes(node, rank, ctx)
    return mean if axes is not None and axes == reduce_axes(source, rank, ctx) else None


def _kept_ratio(tensor: gs.Tensor, axes: list[int], removed: Removed, ctx: Context) -> float:
    """Kept / original number of elements over `axes` of a tensor after slim pruning."""
    old, new = removed.old_shapes.get(tensor.name), ctx.shapes.get(tensor.name)
    if old is None or new is None:
        return 1.0
    return float(np.prod([new[a] for a in axes])) / float(np.prod([old[a] for a in axes]))


def fix_reduce_mean(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """ReduceMean over pruned channels: times r (the removed zeros counted), plus (1 - r) * m^2 for a
    decomposed LayerNorm's variance (each removed channel's (0 - m)^2)."""
    x = node.inputs[0]
    shape = removed.old_shapes.get(x.name)
    axes = reduce_axes(node, len(shape), ctx) if shape is not None else None
    if ctx.norms == "approximate" or axes is None or not any(removed.of(x, a).size for a in axes):
        return
    r = _kept_ratio(x, axes, removed, ctx)
    mean = variance_of(node, ctx)
    out = node.outputs[0]
    build = Builder(node.name or out.name, ctx.opset, out.dtype)
    node.outputs[0] = raw = build.tensor("over_kept")
    if mean is None:
        build.op("Mul", [raw, build.const(r)], out=out)
        ctx.memo[(id(out), "mean")] = node
    else:
        square = build.op("Mul", [mean, mean])
        removed_part = build.op("Mul", [square, build.const((1 - r) / r)])
        build.op("Mul", [build.op("Add", [raw, removed_part]), build.const(r)], out=out)
    ctx.added.extend(build.nodes)


# --- fused normalizations -----------------------------------------------------------------------------


def layer_norm(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """LayerNormalization, RMSNormalization, SimplifiedLayerNormalization: normalize axes >= `axis`.

    A normalized channel axis is prunable when the scale (and bias) are per channel: their slices of
    removed channels are zeroed with the producer, so those channels leave as zeros; the input ties as
    SUMMED (its removed channels must be zero), and the fixup keeps the original count.
    """
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.shape(x)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    rank = len(shape)
    first = norm_axis(int(node.attrs.get("axis", -1)), rank)
    if not port.is_input and port.index > 0:
        return []  # the mean and deviation outputs: reduced, no channels
    if port.is_input and port.index > 0:
        axis += rank - len(ctx.shape(port.tensor(node)) or ())  # a scale or bias broadcast to x
    n = shape[axis]
    if axis < first:
        return [Bundle(n, [tie(x, axis, n), tie(y, axis, n)])]
    if any(present(o) and o.outputs for o in node.outputs[1:]):
        return Stop(f"the mean or deviation of {node.op} '{node.name}' is read")
    ties = [tie(x, axis, n, SUMMED), tie(y, axis, n)]
    for w in node.inputs[1:3]:
        if not present(w):
            continue
        if not isinstance(w, gs.Constant):
            return Stop(f"{node.op} '{node.name}' has a scale or bias computed at run time")
        a = axis - (rank - w.values.ndim)
        if a < 0 or w.values.shape[a] == 1:
            return Stop(f"{node.op} '{node.name}' scales every channel alike")
        ties.append(tie(w, a, n, AFFINE))
    return [Bundle(n, ties)]


def _normalized(node: gs.Node, removed: Removed, ctx: Context) -> tuple[list[int], float] | None:
    """The normalized axes and r, when slim pruning removed some of their channels (exact mode only)."""
    x = node.inputs[0]
    shape = removed.old_shapes.get(x.name)
    if ctx.norms == "approximate" or shape is None:
        return None
    axes = list(range(norm_axis(int(node.attrs.get("axis", -1)), len(shape)), len(shape)))
    if not any(removed.of(x, a).size for a in axes):
        return None
    return axes, _kept_ratio(x, axes, removed, ctx)


def fix_rms_norm(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """RMSNorm over the kept channels with epsilon / r and scale / sqrt(r) is RMSNorm over all of them."""
    found = _normalized(node, removed, ctx)
    if found is None:
        return
    r = found[1]
    node.attrs["epsilon"] = float(node.attrs.get("epsilon", 1e-5)) / r
    scale = node.inputs[1]
    node.inputs[1] = gs.Constant(f"{scale.name}_over_kept", (np.asarray(scale.values) / np.sqrt(r)).astype(scale.values.dtype))


def fix_layer_norm(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """Fused LayerNorm over the kept channels of N normalized elements (N_o before pruning): mean m = r *
    mean over the kept; y = (x - m) * scale * sqrt(N_o) / sqrt(sum (x - m)^2 + (N_o - N) m^2 + N_o eps) + B."""
    found = _normalized(node, removed, ctx)
    if found is None:
        return
    axes, r = found
    x, scale, y = node.inputs[0], node.inputs[1], node.outputs[0]
    total = float(np.prod([removed.old_shapes[x.name][a] for a in axes]))
    build = Builder(node.name or y.name, ctx.opset, y.dtype)
    mean = build.op("Mul", [build.reduce("ReduceMean", x, axes), build.const(r)])
    centered = build.op("Sub", [x, mean])
    squares = build.op("Mul", [build.op("Mul", [mean, mean]), build.const(total * (1 - r))])
    spread = build.op("Add", [build.reduce("ReduceSumSquare", centered, axes), squares])
    deviation = build.op("Sqrt", [build.op("Add", [spread, build.const(total * float(node.attrs.get("epsilon", 1e-5)))])])
    scaled = np.asarray(scale.values) * np.sqrt(total)
    normalized = build.op("Mul", [build.op("Div", [centered, deviation]), build.const(scaled)])
    bias = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    if bias is None:
        build.nodes[-1].outputs[0] = y
    else:
        build.op("Add", [normalized, bias], out=y)
    node.inputs.clear()
    node.outputs.clear()  # the fused node goes (cleanup drops it); the subgraph writes y
    ctx.added.extend(build.nodes)


def group_norm(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """GroupNormalization: channels go in whole groups (each group normalizes only its own channels, so
    dropping one changes no other). Scale and bias are per group (opset 18) or per channel (opset 21)."""
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.shape(x)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    if not port.is_input and port.index > 0:
        return []
    if port.index == 0 and axis != 1:  # other axes of x and y pass through
        return [Bundle(shape[axis], [tie(x, axis, shape[axis]), tie(y, axis, shape[axis])])]
    groups, channels = int(node.attrs["num_groups"]), shape[1]
    if groups < 2 or channels % groups:
        return Stop(f"channels are normalized in one group by GroupNormalization '{node.name}'")
    c = np.arange(channels)
    pairs = np.stack([c // (channels // groups), c], axis=1)
    ties = [Tie(x, 1, pairs), Tie(y, 1, pairs)]
    for w in node.inputs[1:3]:
        if not isinstance(w, gs.Constant):
            return Stop(f"GroupNormalization '{node.name}' has a scale or bias computed at run time")
        ties.append(Tie(w, 0, pairs if w.values.shape[0] == channels else identity(groups), AFFINE))
    return [Bundle(groups, ties)]


def fix_group_norm(node: gs.Node, removed: Removed, ctx: Context) -> None:
    x = node.inputs[0]
    gone = removed.of(x, 1).size
    if gone:
        per_group = removed.old_shapes[x.name][1] // int(node.attrs["num_groups"])
        node.attrs["num_groups"] = int(node.attrs["num_groups"]) - gone // per_group


def grouped(reshape: RuleFn) -> RuleFn:
    """Reshape, plus the group split of GroupNorm as PyTorch exports it before opset 18: [N, C, *S] ->
    [N, G, C/G * prod(S)] (InstanceNormalization normalizes each of the G rows) and back. Channel c goes
    with row c // (C/G): removing a row removes its whole group of channels, which no other row reads."""

    def rule(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
        result = reshape(node, port, axis, ctx)
        if not isinstance(result, Stop) or node.op != "Reshape" or port.index != 0 or axis != 1:
            return result
        target = node.inputs[1]
        if not isinstance(target, gs.Constant) and target.name not in ctx.values:
            return result  # a target computed from data: the reshape rule's reason stands
        return _group_rows(node, ctx) or result

    return rule


def _group_rows(node: gs.Node, ctx: Context) -> list[Bundle] | None:
    """The bundle of a channels <-> group rows reshape, or None when the node is not one."""
    x, y = node.inputs[0], node.outputs[0]
    sx, sy = ctx.shape(x), ctx.shape(y)
    if sx is None or sy is None:
        return None
    wide, rows = (x, y) if len(sy) == 3 else (y, x)
    sw, sr = ctx.shape(wide), ctx.shape(rows)
    if len(sr) != 3 or len(sw) < 3 or sw[0] != sr[0] or len(sw) == 3:
        return None
    channels, groups = sw[1], sr[1]
    if groups < 2 or channels % groups or sr[2] != channels // groups * int(np.prod(sw[2:])):
        return None
    c = np.arange(channels)
    return [Bundle(groups, [Tie(wide, 1, np.stack([c // (channels // groups), c], axis=1)), tie(rows, 1, groups)])]


# --- building the rewritten subgraphs -----------------------------------------------------------------


class Builder:
    """New nodes and tensors named after the node they replace (`base`), in the model's float type."""

    def __init__(self, base: str, opset: int, dtype: object):
        self.base, self.opset = base, opset
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        self.nodes: list[gs.Node] = []
        self.count = 0

    def _name(self, what: str) -> str:
        self.count += 1
        return f"{self.base}/exact_{what}_{self.count}"

    def tensor(self, what: str) -> gs.Variable:
        return gs.Variable(self._name(what), dtype=self.dtype)

    def const(self, value: object) -> gs.Constant:
        return gs.Constant(self._name("const"), np.asarray(value, dtype=self.dtype))

    def op(self, op: str, inputs: list[gs.Tensor], out: gs.Tensor | None = None, **attrs: object) -> gs.Tensor:
        out = out if out is not None else self.tensor(op)
        self.nodes.append(gs.Node(op, self._name(op), attrs, inputs, [out]))
        return out

    def reduce(self, op: str, x: gs.Tensor, axes: list[int]) -> gs.Tensor:
        """A Reduce* over `axes` keeping them (axes an input from opset 18, an attribute before)."""
        if self.opset >= 18:
            return self.op(op, [x, gs.Constant(self._name("axes"), np.array(axes, np.int64))], keepdims=1)
        return self.op(op, [x], axes=axes, keepdims=1)
