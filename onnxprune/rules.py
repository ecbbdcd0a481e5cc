"""Per-operator channel rules: how a channel index on one tensor axis maps to the node's other tensors.

A rule answers one question: "channel axis `axis` of the tensor at `port` of `node` is being pruned —
which axes of the node's other tensors must lose the same channels?" It answers with `Bundle`s: a bundle
is an index space (for a Conv's output: its output channels) and the tensor axes tied to it, each with
the pairs (space index, index along that axis). A `Stop` says the axis cannot be pruned, and why.

Example (Conv with weight W [O, I, k, k] and bias B, arriving at output Y's axis 1):

    Bundle(O, [Tie(Y, 1, identity(O)), Tie(W, 0, identity(O), role=OUT), Tie(B, 0, identity(O), role=OUT)])

Roles of weights say what sparse pruning does with them: OUT and AFFINE slices are zeroed (they produce
the channel), IN slices (consumer weights) and KEEP slices (BN statistics, divisors) are left as they are;
slim pruning deletes every tied slice. CONTRACT ties two activations summed over in a MatMul.

Each rule also names how the *value of a removed channel* flows through the node (`value`, see
`channels.py`) and may have a `fixup` that rewrites attributes and shape inputs after slim pruning.
An operator without a rule stops every group that reaches it: unknown means unprunable, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
import onnx_graphsurgeon as gs

OUT, IN, AFFINE, KEEP, CONTRACT = "out", "in", "affine", "keep", "contract"
ZEROED_ROLES = (OUT, AFFINE)


@dataclass
class Tie:
    """Axis `axis` of `tensor` belongs to a bundle: `pairs[:, 0]` space indices, `pairs[:, 1]` axis indices."""

    tensor: gs.Tensor
    axis: int
    pairs: np.ndarray
    role: str | None = None


@dataclass
class Bundle:
    """An index space of `size` channels and the tensor axes that carry them."""

    size: int
    ties: list[Tie]


@dataclass
class Stop:
    """The arriving axis cannot be pruned: `reason` says why, in words a user understands."""

    reason: str


class Value(Enum):
    """How the (spatially uniform) value of a removed channel goes through a node."""

    LINEAR = "linear"  # zero when any tied input is zero (weights of removed channels are zeroed)
    COPY = "copy"  # the output channel holds the input channel's value
    ZERO = "zero"  # zero stays zero; any other value becomes unknown
    UNARY = "unary"  # elementwise function of the input value
    BINARY = "binary"  # elementwise arithmetic of several inputs, with broadcasting
    UNKNOWN = "unknown"


@dataclass
class Port:
    """Where a tensor sits on a node."""

    is_input: bool
    index: int

    def tensor(self, node: gs.Node) -> gs.Tensor:
        return node.inputs[self.index] if self.is_input else node.outputs[self.index]


class Context:
    """What rules may read: concrete shapes at batch 1, constant values, a memo per node."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], opset: int, values: dict[str, np.ndarray] | None = None,
                 attention: str = "dims"):
        self.shapes = shapes
        self.opset = opset
        self.values = values or {}  # small integer tensors computed from Shape ops, at batch 1
        self.attention = attention  # "dims": prune head_dim uniformly over heads; "heads": whole heads
        self.memo: dict[tuple[int, str], object] = {}

    def shape(self, tensor: gs.Tensor) -> tuple[int, ...] | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.values.shape)
        return self.shapes.get(tensor.name)

    def const(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """Values of a weight or constant; None for anything computed at run time."""
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values)
        return None

    def value(self, tensor: gs.Tensor | None) -> np.ndarray | None:
        """Like `const`, but also knows shape computations (their value at batch 1)."""
        if tensor is None or isinstance(tensor, gs.Constant):
            return self.const(tensor)
        return self.values.get(tensor.name)


RuleFn = Callable[[gs.Node, Port, int, Context], "list[Bundle] | Stop"]
FixupFn = Callable[[gs.Node, "Removed", Context], None]


@dataclass
class Rule:
    """One operator's entry: its bundles, how removed values pass, and its slim-time fixup."""

    bundles: RuleFn
    value: Value = Value.UNKNOWN
    unary: Callable[[np.ndarray, gs.Node], np.ndarray] | None = None
    binary: str | None = None
    fixup: FixupFn | None = None
    divisor_inputs: tuple[int, ...] = field(default_factory=tuple)


class Removed:
    """Slim-time view: which indices are removed from each tensor axis, and the tensors' new sizes."""

    def __init__(self, indices: dict[tuple[str, int], np.ndarray], shapes: dict[str, tuple[int, ...]]):
        self.indices = indices
        self.old_shapes = shapes

    def of(self, tensor: gs.Tensor, axis: int) -> np.ndarray:
        return self.indices.get((tensor.name, axis), np.zeros(0, dtype=np.int64))

    def kept(self, tensor: gs.Tensor, axis: int, size: int) -> np.ndarray:
        return np.setdiff1d(np.arange(size), self.of(tensor, axis))


# --- small helpers -----------------------------------------------------------------------------------


def identity(n: int) -> np.ndarray:
    idx = np.arange(n, dtype=np.int64)
    return np.stack([idx, idx], axis=1)


def tie(tensor: gs.Tensor, axis: int, n: int, role: str | None = None) -> Tie:
    return Tie(tensor, axis, identity(n), role)


def weight_role(tensor: gs.Tensor, role: str) -> str | None:
    return role if isinstance(tensor, gs.Constant) else None


def present(tensor: gs.Tensor | None) -> bool:
    """Optional inputs are empty Variables in onnx-graphsurgeon."""
    return tensor is not None and not (isinstance(tensor, gs.Variable) and not tensor.name)


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def ints_input(node: gs.Node, index: int, attr: str, ctx: Context) -> list[int] | None:
    """An int list given as attribute (older opsets) or as input (newer), constant or computed from
    shapes; [] when absent, None when it depends on data."""
    if attr in node.attrs:
        return [int(v) for v in np.atleast_1d(node.attrs[attr])]
    if index < len(node.inputs) and present(node.inputs[index]):
        values = ctx.value(node.inputs[index])
        return None if values is None else [int(v) for v in np.atleast_1d(values)]
    return []


def computed_input(node: gs.Node, index: int) -> bool:
    """True when an input exists and is computed at run time (so it adapts to new channel counts)."""
    return index < len(node.inputs) and present(node.inputs[index]) and not isinstance(node.inputs[index], gs.Constant)


def _shapes_or_stop(ctx: Context, *tensors: gs.Tensor) -> list[tuple[int, ...]] | Stop:
    shapes = []
    for tensor in tensors:
        shape = ctx.shape(tensor)
        if shape is None:
            return Stop(f"shape of '{tensor.name}' is unknown")
        shapes.append(shape)
    return shapes


# --- elementwise and pass-through ------------------------------------------------------------------


def elementwise(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Numpy broadcasting: axes align from the right; an input of size 1 on the axis is broadcast."""
    out = node.outputs[0]
    tensors = [t for t in node.inputs if present(t)]
    shapes = _shapes_or_stop(ctx, out, *tensors)
    if isinstance(shapes, Stop):
        return shapes
    out_shape, in_shapes = shapes[0], shapes[1:]
    here = ctx.shape(port.tensor(node))
    out_axis = axis + len(out_shape) - len(here) if port.is_input else axis
    size = out_shape[out_axis]
    if size == 1:
        return Stop("single channel")
    ties = [tie(out, out_axis, size)]
    rule = RULES[node.op]
    for k, (tensor, shape) in enumerate(zip(tensors, in_shapes)):
        a = out_axis - (len(out_shape) - len(shape))
        if a < 0 or shape[a] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        if shape[a] != size:
            return Stop(f"{node.op} '{node.name}' has mismatched sizes on the channel axis")
        role = KEEP if k in rule.divisor_inputs else AFFINE
        ties.append(tie(tensor, a, size, weight_role(tensor, role)))
    return [Bundle(size, ties)]


def passthrough(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Output 0 has the same axes as input 0 (activations, Identity, Cast, Dropout)."""
    shape = ctx.shape(node.inputs[0])
    if shape is None:
        return Stop(f"shape of '{node.inputs[0].name}' is unknown")
    if port.index != 0:
        return []  # extra inputs (Clip bounds) or outputs (Dropout mask) carry no channels
    return [Bundle(shape[axis], [tie(node.inputs[0], axis, shape[axis]), tie(node.outputs[0], axis, shape[axis])])]


def neutral(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Reads a tensor without carrying its channels anywhere."""
    return []


SHAPE_SINKS = {("Reshape", 1), ("Slice", 1), ("Slice", 2), ("Slice", 3), ("Split", 1), ("Expand", 1),
               ("ConstantOfShape", 0), ("Tile", 1), ("Resize", 2), ("Resize", 3), ("Pad", 1), ("Upsample", 1)}


def shape_of(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """`Shape` is harmless while the channel count it reads only sizes other tensors (Reshape targets,
    Slice bounds): those recompute themselves after slim pruning. Used as data it would change values."""
    start = int(node.attrs.get("start", 0))
    rank = len(ctx.shape(node.inputs[0]) or ())
    start = norm_axis(start, rank) if rank else start
    frontier = []
    for consumer in node.outputs[0].outputs:
        if consumer.op == "Gather" and consumer.inputs[0] is node.outputs[0]:
            idx = ctx.const(consumer.inputs[1])
            if idx is not None and axis not in {norm_axis(int(i), rank - start) + start for i in np.atleast_1d(idx)}:
                continue
        frontier.append((consumer, node.outputs[0]))
    seen = set()
    while frontier:
        consumer, tensor = frontier.pop()
        if id(consumer) in seen:
            continue
        seen.add(id(consumer))
        outputs = [o for o in consumer.outputs if o.name in ctx.values]
        if outputs and len(outputs) == len(consumer.outputs):
            frontier += [(c, o) for o in outputs for c in o.outputs]
            continue
        positions = {i for i, t in enumerate(consumer.inputs) if t is tensor}
        if not all((consumer.op, i) in SHAPE_SINKS for i in positions):
            return Stop(f"the channel count is read at run time by Shape '{node.name}' and used by "
                        f"{consumer.op} '{consumer.name}'")
    return []


# --- weighted layers -------------------------------------------------------------------------------


def conv(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Conv: output channels tie weight rows and bias; input channels tie weight columns.

    Depthwise (one input channel per group) ties output channel o to input channel o // multiplier.
    Grouped convs keep their group count: channel q of every group goes together, so groups stay equal.
    """
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    if not isinstance(w, gs.Constant):
        return Stop(f"Conv '{node.name}' has weights computed at run time")
    groups = int(node.attrs.get("group", 1))
    out_ch, in_per_group = w.values.shape[0], w.values.shape[1]
    in_ch = in_per_group * groups
    out_per_group = out_ch // groups
    bias = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    tensor = port.tensor(node)
    on_output = (tensor is y and axis == 1) or (tensor is w and axis == 0) or (tensor is bias and axis == 0)
    on_input = (tensor is x and axis == 1) or (tensor is w and axis == 1)
    depthwise = groups > 1 and in_per_group == 1
    if on_output or (on_input and depthwise):
        o = np.arange(out_ch)
        if groups > 1 and not depthwise:  # channel q of every group goes together: groups stay equal
            pairs, size = np.stack([o % out_per_group, o], axis=1), out_per_group
        else:
            pairs, size = identity(out_ch), out_ch
        ties = [Tie(y, 1, pairs), Tie(w, 0, pairs, OUT)]
        if bias is not None:
            ties.append(Tie(bias, 0, pairs, OUT))
        if depthwise:  # output o reads input o // multiplier: they go together
            ties.append(Tie(x, 1, np.stack([o, o // out_per_group], axis=1)))
        return [Bundle(size, ties)]
    if on_input:
        i = np.arange(in_ch)
        return [Bundle(in_per_group, [Tie(x, 1, np.stack([i % in_per_group, i], axis=1)), tie(w, 1, in_per_group, IN)])]
    return Stop(f"axis {axis} of '{tensor.name}' is not a channel axis of Conv '{node.name}'")


def conv_transpose(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """ConvTranspose: weight is [C_in, C_out / group, k...]; output channels tie weight axis 1."""
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    if not isinstance(w, gs.Constant):
        return Stop(f"ConvTranspose '{node.name}' has weights computed at run time")
    groups = int(node.attrs.get("group", 1))
    in_ch, out_per_group = w.values.shape[0], w.values.shape[1]
    out_ch = out_per_group * groups
    in_per_group = in_ch // groups
    bias = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    tensor = port.tensor(node)
    on_output = (tensor is y and axis == 1) or (tensor is w and axis == 1) or (tensor is bias and axis == 0)
    on_input = (tensor is x and axis == 1) or (tensor is w and axis == 0)
    if groups == 1:
        if on_output:
            ties = [tie(y, 1, out_ch), tie(w, 1, out_ch, OUT)]
            if bias is not None:
                ties.append(tie(bias, 0, out_ch, OUT))
            return [Bundle(out_ch, ties)]
        if on_input:
            return [Bundle(in_ch, [tie(x, 1, in_ch), tie(w, 0, in_ch, IN)])]
    elif in_per_group == 1 and (on_input or on_output):  # depthwise: input c makes outputs c*m .. c*m+m-1
        o = np.arange(out_ch)
        ties = [Tie(y, 1, np.stack([o // out_per_group, o], axis=1)), tie(x, 1, in_ch), tie(w, 0, in_ch, OUT)]
        if bias is not None:
            ties.append(Tie(bias, 0, np.stack([o // out_per_group, o], axis=1), OUT))
        return [Bundle(in_ch, ties)]
    return Stop(f"ConvTranspose '{node.name}' with group={groups} is not supported on axis {axis}")


def gemm(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Gemm: Y[M, N] = A[M, K] @ B[K, N] + C; N ties B's N axis and C, K ties A and B."""
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    y = node.outputs[0]
    shapes = _shapes_or_stop(ctx, a, b, y)
    if isinstance(shapes, Stop):
        return shapes
    a_k = 0 if node.attrs.get("transA", 0) else 1
    b_k, b_n = (1, 0) if node.attrs.get("transB", 0) else (0, 1)
    k, n = shapes[1][b_k], shapes[1][b_n]
    tensor = port.tensor(node)
    c_shape = ctx.shape(c) if c is not None else None
    c_axis = len(c_shape) - 1 if c_shape and c_shape[-1] == n and n > 1 else None
    if (tensor is y and axis == 1) or (tensor is b and axis == b_n) or (tensor is c and axis == c_axis):
        ties = [tie(y, 1, n), tie(b, b_n, n, weight_role(b, OUT))]
        if c_axis is not None:
            ties.append(tie(c, c_axis, n, weight_role(c, OUT)))
        return [Bundle(n, ties)]
    if (tensor is a and axis == a_k) or (tensor is b and axis == b_k):
        role = IN if isinstance(b, gs.Constant) else CONTRACT
        return [Bundle(k, [tie(a, a_k, k, weight_role(a, IN) or role), tie(b, b_k, k, weight_role(b, IN) or role)])]
    return Stop(f"axis {axis} of '{tensor.name}' is the row axis of Gemm '{node.name}'")


def matmul(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """MatMul with numpy semantics: A[..., M, K] @ B[..., K, N] -> Y[..., M, N], batch axes broadcast."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    shapes = _shapes_or_stop(ctx, a, b, y)
    if isinstance(shapes, Stop):
        return shapes
    sa, sb, sy = shapes
    if len(sa) < 2 or len(sb) < 2:
        return Stop(f"MatMul '{node.name}' with a vector operand is not supported")
    ra, rb, ry = len(sa), len(sb), len(sy)
    tensor = port.tensor(node)
    if (tensor is a and axis == ra - 1) or (tensor is b and axis == rb - 2):
        k = sa[-1]
        role = IN if isinstance(a, gs.Constant) or isinstance(b, gs.Constant) else CONTRACT
        return [Bundle(k, [tie(a, ra - 1, k, weight_role(a, IN) or role), tie(b, rb - 2, k, weight_role(b, IN) or role)])]
    if (tensor is a and axis == ra - 2) or (tensor is y and axis == ry - 2):
        m = sa[-2]
        return [Bundle(m, [tie(a, ra - 2, m, weight_role(a, OUT)), tie(y, ry - 2, m)])]
    if (tensor is b and axis == rb - 1) or (tensor is y and axis == ry - 1):
        n = sb[-1]
        return [Bundle(n, [tie(b, rb - 1, n, weight_role(b, OUT)), tie(y, ry - 1, n)])]
    y_axis = axis + ry - len(ctx.shape(tensor)) if tensor is not y else axis
    size = sy[y_axis]
    ties = [tie(y, y_axis, size)]
    for t, s in ((a, sa), (b, sb)):
        ax = y_axis - (ry - len(s))
        if ax >= 0 and s[ax] == size:
            ties.append(tie(t, ax, size, weight_role(t, OUT)))
    return [Bundle(size, ties)]


def normalization(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """BatchNormalization / InstanceNormalization: per-channel affine terms on axis 1."""
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.shape(x) or ctx.shape(y)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    if not port.is_input and port.index > 0:
        return []  # training-mode running statistics
    if port.index == 0 and axis != 1:
        return [Bundle(shape[axis], [tie(x, axis, shape[axis]), tie(y, axis, shape[axis])])]
    if port.index > 0 and axis != 0:
        return Stop(f"axis {axis} of '{port.tensor(node).name}' is not a channel axis")
    c = shape[1]
    roles = (AFFINE, AFFINE, KEEP, KEEP)  # scale, bias, mean, var
    ties = [tie(x, 1, c), tie(y, 1, c)]
    for param, role in zip(node.inputs[1:], roles):
        if present(param):
            ties.append(tie(param, 0, c, weight_role(param, role)))
    return [Bundle(c, ties)]


# --- layout --------------------------------------------------------------------------------------


def concat(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Concat: on the concat axis input k's channel j is output channel offset_k + j."""
    y = node.outputs[0]
    shapes = _shapes_or_stop(ctx, y, *node.inputs)
    if isinstance(shapes, Stop):
        return shapes
    cat = norm_axis(int(node.attrs["axis"]), len(shapes[0]))
    if axis != cat:
        size = shapes[0][axis]
        return [Bundle(size, [tie(y, axis, size)] + [tie(t, axis, size, weight_role(t, OUT)) for t in node.inputs])]
    bundles, offset = [], 0
    for k, (t, s) in enumerate(zip(node.inputs, shapes[1:])):
        n = s[cat]
        if n and (not port.is_input or port.index == k):
            j = np.arange(n)
            bundles.append(Bundle(n, [tie(t, cat, n, weight_role(t, OUT)), Tie(y, cat, np.stack([j, offset + j], 1))]))
        offset += n
    return bundles


def split(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Split: output k's channel j is input channel offset_k + j."""
    x = node.inputs[0]
    shapes = _shapes_or_stop(ctx, x, *node.outputs)
    if isinstance(shapes, Stop):
        return shapes
    cut = norm_axis(int(node.attrs.get("axis", 0)), len(shapes[0]))
    if axis != cut:
        size = shapes[0][axis]
        return [Bundle(size, [tie(x, axis, size)] + [tie(t, axis, size) for t in node.outputs])]
    if len(node.inputs) > 1 and present(node.inputs[1]) and ctx.const(node.inputs[1]) is None:
        return Stop(f"Split '{node.name}' sizes are computed at run time")
    bundles, offset = [], 0
    for k, (t, s) in enumerate(zip(node.outputs, shapes[1:])):
        n = s[cut]
        if n and (port.is_input or port.index == k):
            j = np.arange(n)
            bundles.append(Bundle(n, [tie(t, cut, n), Tie(x, cut, np.stack([j, offset + j], 1))]))
        offset += n
    return bundles


def fix_split(node: gs.Node, removed: Removed, ctx: Context) -> None:
    x = node.inputs[0]
    rank = len(removed.old_shapes[x.name])
    cut = norm_axis(int(node.attrs.get("axis", 0)), rank)
    gone = removed.of(x, cut)
    if gone.size == 0:
        return
    sizes, offset = [], 0
    for out in node.outputs:
        n = removed.old_shapes[out.name][cut]
        sizes.append(n - int(np.count_nonzero((gone >= offset) & (gone < offset + n))))
        offset += n
    node.attrs.pop("num_outputs", None)
    if ctx.opset >= 13:
        node.attrs.pop("split", None)
        split_input = gs.Constant(f"{node.name or node.outputs[0].name}_split_sizes", np.array(sizes, np.int64))
        if len(node.inputs) > 1:
            node.inputs[1] = split_input
        else:
            node.inputs.append(split_input)
    else:
        node.attrs["split"] = sizes


def slice_(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Slice with step 1 on the channel axis keeps a contiguous range of input channels."""
    x, y = node.inputs[0], node.outputs[0]
    if port.is_input and port.index != 0:
        return Stop("slice bounds are not channels")
    shapes = _shapes_or_stop(ctx, x, y)
    if isinstance(shapes, Stop):
        return shapes
    sx, sy = shapes
    axes = ints_input(node, 3, "axes", ctx)
    if axes is None:
        return Stop(f"Slice '{node.name}' axes are computed at run time")
    axes = [norm_axis(a, len(sx)) for a in axes] if axes else list(range(len(sx)))
    if axis not in axes:
        return [Bundle(sx[axis], [tie(x, axis, sx[axis]), tie(y, axis, sx[axis])])]
    bounds = _slice_bounds(node, ctx, axes.index(axis), sx[axis])
    if isinstance(bounds, Stop):
        return bounds
    start, _ = bounds
    n = sy[axis]
    j = np.arange(n)
    if not any(computed_input(node, i) for i in (1, 2)):
        return [Bundle(n, [tie(y, axis, n), Tie(x, axis, np.stack([j, start + j], 1))])]
    # Bounds computed from the channel count (torch's chunk: x[:, k*C/p:(k+1)*C/p]) stay a 1/p part after
    # pruning only if every part loses as many channels: channel j of all parts goes together.
    size = sx[axis]
    if n == 0 or size % n or start % n:
        return Stop(f"Slice '{node.name}' bounds are computed at run time")
    parts = np.arange(size)
    return [Bundle(n, [tie(y, axis, n), Tie(x, axis, np.stack([parts % n, parts], 1))])]


def _slice_bounds(node: gs.Node, ctx: Context, position: int, size: int) -> tuple[int, int] | Stop:
    starts, ends = ints_input(node, 1, "starts", ctx), ints_input(node, 2, "ends", ctx)
    steps = ints_input(node, 4, "steps", ctx)
    if starts is None or ends is None or steps is None:
        return Stop(f"Slice '{node.name}' bounds are computed at run time")
    if steps and steps[position] != 1:
        return Stop(f"Slice '{node.name}' with step {steps[position]} on the channel axis")
    start, stop, _ = slice(starts[position], ends[position]).indices(size)
    return start, max(stop, start)


def fix_slice(node: gs.Node, removed: Removed, ctx: Context) -> None:
    if any(computed_input(node, i) for i in (1, 2)):
        return  # bounds computed from the (new) channel count
    x = node.inputs[0]
    size_old = removed.old_shapes[x.name]
    axes = ints_input(node, 3, "axes", ctx) or list(range(len(size_old)))
    axes = [norm_axis(a, len(size_old)) for a in axes]
    starts, ends = list(ints_input(node, 1, "starts", ctx)), list(ints_input(node, 2, "ends", ctx))
    changed = False
    for position, axis in enumerate(axes):
        gone = removed.of(x, axis)
        if gone.size == 0:
            continue
        start, stop = _slice_bounds(node, ctx, position, size_old[axis])
        starts[position] = start - int(np.count_nonzero(gone < start))
        ends[position] = stop - int(np.count_nonzero(gone < stop))
        changed = True
    if not changed:
        return
    if "starts" in node.attrs:
        node.attrs["starts"], node.attrs["ends"] = starts, ends
    else:
        node.inputs[1] = gs.Constant(f"{node.outputs[0].name}_starts", np.array(starts, np.int64))
        node.inputs[2] = gs.Constant(f"{node.outputs[0].name}_ends", np.array(ends, np.int64))


def transpose(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.shape(x)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    perm = [int(p) for p in node.attrs.get("perm", list(range(len(shape)))[::-1])]
    in_axis = axis if port.is_input else perm[axis]
    return [Bundle(shape[in_axis], [tie(x, in_axis, shape[in_axis]), tie(y, perm.index(in_axis), shape[in_axis])])]


def squeeze_like(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Squeeze/Unsqueeze: the channel axis moves by the number of size-1 axes removed or added before it."""
    x, y = node.inputs[0], node.outputs[0]
    shapes = _shapes_or_stop(ctx, x, y)
    if isinstance(shapes, Stop):
        return shapes
    sx, sy = shapes
    if port.is_input and port.index != 0:
        return []
    if (sx if port.is_input else sy)[axis] == 1:
        return Stop("single channel")
    big_x = [i for i, d in enumerate(sx) if d != 1]
    big_y = [i for i, d in enumerate(sy) if d != 1]
    if len(big_x) != len(big_y):
        return Stop(f"{node.op} '{node.name}' changes non-unit axes")
    in_axis = axis if port.is_input else big_x[big_y.index(axis)]
    out_axis = big_y[big_x.index(in_axis)]
    size = sx[in_axis]
    return [Bundle(size, [tie(x, in_axis, size), tie(y, out_axis, size)])]


def reshape(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Reshape and Flatten as merges and splits of axes (row-major).

    Merging [C, H, W] into F ties channel c to the H*W features it becomes (a Flatten before a Gemm).
    Splitting F into (A, B) ties each feature to its coordinate on one of the new axes, chosen once per
    node (the larger one): (heads, head_dim) prunes head_dim uniformly across heads, and the
    (groups, channels) of a channel shuffle prunes the same position in every group.
    """
    x, y = node.inputs[0], node.outputs[0]
    if port.is_input and port.index != 0:
        return Stop("a shape is not a channel axis")
    shapes = _shapes_or_stop(ctx, x, y)
    if isinstance(shapes, Stop):
        return shapes
    sx, sy = shapes
    segment = _segment_of(sx, sy, axis, port.is_input)
    if segment is None:
        return Stop(f"{node.op} '{node.name}' regroups the channel axis")
    ins, outs = segment
    key = (id(node), f"segment{ins}{outs}")
    if len(ins) == 1 and len(outs) == 1:
        pick_in, pick_out = ins[0], outs[0]
    elif len(ins) == 1:  # split
        pick_in = ins[0]
        if port.is_input:
            heads = ctx.attention == "heads" and _feeds_matmul(y)
            pick_out = ctx.memo.setdefault(key, outs[0] if heads else _largest(sy, outs))
        else:
            pick_out = ctx.memo.setdefault(key, axis)
    else:  # merge
        pick_out = outs[0]
        pick_in = ctx.memo.setdefault(key, axis if port.is_input else _largest(sx, ins))
    if axis != (pick_in if port.is_input else pick_out):
        return Stop(f"{node.op} '{node.name}' mixes this axis with another pruned axis")
    if node.op == "Reshape":
        problem = _target_problem(node, pick_out, ctx)
        if problem:
            return Stop(problem)
    if len(ins) == 1 and len(outs) == 1:
        return [Bundle(sx[pick_in], [tie(x, pick_in, sx[pick_in]), tie(y, pick_out, sy[pick_out])])]
    flat = np.arange(int(np.prod([sx[i] for i in ins])))
    if len(ins) == 1:
        coords = np.unravel_index(flat, [sy[o] for o in outs])[outs.index(pick_out)]
        n = sy[pick_out]
        return [Bundle(n, [Tie(x, pick_in, np.stack([coords, flat], 1)), tie(y, pick_out, n)])]
    coords = np.unravel_index(flat, [sx[i] for i in ins])[ins.index(pick_in)]
    n = sx[pick_in]
    return [Bundle(n, [tie(x, pick_in, n), Tie(y, pick_out, np.stack([coords, flat], 1))])]


def _feeds_matmul(tensor: gs.Tensor) -> bool:
    """An attention split: (heads, head_dim) that reaches a MatMul, possibly through Transposes."""
    stack = [tensor]
    while stack:
        for consumer in stack.pop().outputs:
            if consumer.op == "MatMul":
                return True
            if consumer.op == "Transpose":
                stack.append(consumer.outputs[0])
    return False


def _largest(shape: tuple[int, ...], axes: list[int]) -> int:
    return max(axes, key=lambda a: (shape[a], a))


def _segment_of(sx, sy, axis: int, on_input: bool) -> tuple[list[int], list[int]] | None:
    """The minimal groups of input and output axes with equal products; the one holding `axis`.

    Axes of size 1 are ignored. None when the axis's group has several axes on both sides.
    """
    xs = [i for i, d in enumerate(sx) if d != 1]
    ys = [i for i, d in enumerate(sy) if d != 1]
    i = j = 0
    while i < len(xs) and j < len(ys):
        ins, outs = [xs[i]], [ys[j]]
        pi, pj = sx[xs[i]], sy[ys[j]]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj and i < len(xs):
                pi *= sx[xs[i]]
                ins.append(xs[i])
                i += 1
            elif pj < pi and j < len(ys):
                pj *= sy[ys[j]]
                outs.append(ys[j])
                j += 1
            else:
                return None
        if axis in (ins if on_input else outs):
            return (ins, outs) if len(ins) == 1 or len(outs) == 1 else None
    return None


def _target_problem(node: gs.Node, out_axis: int, ctx: Context) -> str | None:
    """Can slim pruning rewrite this Reshape's target at `out_axis`? None if yes, else why not."""
    target = node.inputs[1]
    if isinstance(target, gs.Constant) or target.name in ctx.values:
        return None  # a constant we rewrite, or a shape computation that follows the new channel count
    return f"Reshape '{node.name}' target shape depends on data"


def fix_reshape(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """Make the target shape give the pruned output shape.

    `ctx` here knows the pruned model's shapes, so a target computed from `Shape` ops is evaluated as it
    will be after pruning. Entries that come out wrong (constants such as the heads and head size of
    PyTorch's `view(B, S, heads, head_dim)`) are replaced: the whole target when it is constant, or the
    wrong pieces of the Concat that builds it.
    """
    if node.op != "Reshape":
        return
    y, target = node.outputs[0], node.inputs[1]
    expected = ctx.shapes.get(y.name)
    values = ctx.value(target)
    if expected is None or values is None:
        return
    wrong = [a for a, v in enumerate(np.atleast_1d(values)) if v > 0 and v != expected[a]]
    if not wrong:
        return
    if isinstance(target, gs.Constant):
        fixed = np.array(values, dtype=np.int64)
        fixed[wrong] = [expected[a] for a in wrong]
        node.inputs[1] = gs.Constant(f"{y.name}_shape", fixed)
        return
    concat_node = target.inputs[0] if target.inputs else None
    if concat_node is None or concat_node.op != "Concat" or len(concat_node.inputs) != len(expected):
        return  # nothing safe to rewrite; verification of the pruned model reports it
    for a in wrong:
        piece = ctx.value(concat_node.inputs[a])
        concat_node.inputs[a] = gs.Constant(f"{y.name}_dim{a}", np.full(piece.shape, expected[a], dtype=np.int64))


def spatial(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Pooling, Resize, Pad, DepthwiseLike: axes keep their channels when the op does not resize them."""
    x, y = node.inputs[0], node.outputs[0]
    if port.index != 0:
        return []
    shapes = _shapes_or_stop(ctx, x, y)
    if isinstance(shapes, Stop):
        return shapes
    sx, sy = shapes
    if sx[axis] != sy[axis]:
        return Stop(f"{node.op} '{node.name}' changes the size of axis {axis}")
    if node.op == "Pad" and not _zero_pad_on(node, axis, len(sx), ctx):
        return Stop(f"Pad '{node.name}' pads the channel axis")
    sizes = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 and present(node.inputs[3]) else None
    if sizes is not None and ctx.value(sizes) is None:  # from Shape ops it follows the new channel count
        return Stop(f"Resize '{node.name}' output sizes depend on data")
    return [Bundle(sx[axis], [tie(x, axis, sx[axis]), tie(y, axis, sx[axis])])]


def _zero_pad_on(node: gs.Node, axis: int, rank: int, ctx: Context) -> bool:
    pads = ints_input(node, 1, "pads", ctx)
    if pads is None:
        return False
    axes = ints_input(node, 3, "axes", ctx) if len(node.inputs) > 3 else None
    axes = [norm_axis(a, rank) for a in axes] if axes else list(range(rank))
    if axis not in axes:
        return True
    k = axes.index(axis)
    return pads[k] == 0 and pads[k + len(axes)] == 0


def fix_resize(node: gs.Node, removed: Removed, ctx: Context) -> None:
    if len(node.inputs) > 3 and isinstance(node.inputs[3], gs.Constant):
        sizes = np.array(node.inputs[3].values, dtype=np.int64)
        y = node.outputs[0]
        for a in range(len(sizes)):
            sizes[a] -= removed.of(y, a).size
        node.inputs[3] = gs.Constant(f"{y.name}_sizes", sizes)


def reduce(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Reductions over other axes keep the channel axis; reducing the channel axis mixes channels."""
    x, y = node.inputs[0], node.outputs[0]
    if port.is_input and port.index != 0:
        return []
    shape = ctx.shape(x)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    rank = len(shape)
    axes = ints_input(node, 1, "axes", ctx)
    if axes is None:
        return Stop(f"{node.op} '{node.name}' axes are computed at run time")
    if not axes:
        axes = [] if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    axes = sorted(norm_axis(a, rank) for a in axes)
    keep = int(node.attrs.get("keepdims", 1))
    if port.is_input:
        in_axis = axis
    else:
        remaining = [a for a in range(rank) if keep or a not in axes]
        in_axis = remaining[axis]
    if in_axis in axes:
        return Stop(f"channels are reduced by {node.op} '{node.name}'")
    out_axis = in_axis if keep else in_axis - sum(a < in_axis for a in axes)
    return [Bundle(shape[in_axis], [tie(x, in_axis, shape[in_axis]), tie(y, out_axis, shape[in_axis])])]


def normalized_from(first_axis: Callable[[gs.Node, int, Context], int]) -> RuleFn:
    """Ops that normalize over axes >= some axis (Softmax, LayerNormalization): those axes stop."""

    def rule(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
        x, y = node.inputs[0], node.outputs[0]
        if port.index != 0:
            return []
        shape = ctx.shape(x)
        if shape is None:
            return Stop(f"shape of '{x.name}' is unknown")
        first, last = first_axis(node, len(shape), ctx), len(shape) - 1
        if node.op in ("Softmax", "LogSoftmax", "Hardmax") and ctx.opset >= 13:
            last = first
        if first <= axis <= last:
            return Stop(f"channels are normalized by {node.op} '{node.name}'")
        return [Bundle(shape[axis], [tie(x, axis, shape[axis]), tie(y, axis, shape[axis])])]

    return rule


def _softmax_axis(node: gs.Node, rank: int, ctx: Context) -> int:
    return norm_axis(int(node.attrs.get("axis", -1 if ctx.opset >= 13 else 1)), rank)


def _layer_norm_axis(node: gs.Node, rank: int, ctx: Context) -> int:
    return norm_axis(int(node.attrs.get("axis", -1)), rank)


def group_norm(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    if axis == 1 or (port.is_input and port.index > 0):
        return Stop(f"channels are normalized in groups by GroupNormalization '{node.name}'")
    return passthrough(node, port, axis, ctx)


def gather(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Gather (embeddings): axes of the data other than the gathered one carry over to the output."""
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if port.is_input and port.index == 1:
        return Stop(f"Gather '{node.name}' indices are not channels")
    shapes = _shapes_or_stop(ctx, data, indices, y)
    if isinstance(shapes, Stop):
        return shapes
    sd, si, _ = shapes
    g = norm_axis(int(node.attrs.get("axis", 0)), len(sd))
    if port.is_input:
        d_axis = axis
    else:
        d_axis = axis if axis < g else axis - len(si) + 1
        if axis >= g and axis < g + len(si):
            return Stop(f"axis {axis} of '{y.name}' comes from the Gather indices")
    if d_axis == g:
        return Stop(f"Gather '{node.name}' selects along the channel axis")
    y_axis = d_axis if d_axis < g else d_axis + len(si) - 1
    n = sd[d_axis]
    return [Bundle(n, [tie(data, d_axis, n, weight_role(data, OUT)), tie(y, y_axis, n)])]


def fix_conv_groups(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """A depthwise Conv keeps one group per (remaining) input channel."""
    groups = int(node.attrs.get("group", 1))
    w = node.inputs[1]
    if groups <= 1:
        return
    if node.op == "Conv" and w.values.shape[1] == 1:
        old_in = removed.old_shapes[node.inputs[0].name][1]
        node.attrs["group"] = old_in - removed.of(node.inputs[0], 1).size
    elif node.op == "ConvTranspose" and groups == removed.old_shapes[node.inputs[0].name][1]:
        node.attrs["group"] = w.values.shape[0]


# --- values of removed channels through unary ops ---------------------------------------------------


def _attr(node: gs.Node, name: str, default: float) -> float:
    return float(node.attrs.get(name, default))


def _clip(v: np.ndarray, node: gs.Node) -> np.ndarray:
    lo = node.attrs.get("min", -np.inf)
    hi = node.attrs.get("max", np.inf)
    if len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        lo = float(np.asarray(node.inputs[1].values))
    if len(node.inputs) > 2 and isinstance(node.inputs[2], gs.Constant):
        hi = float(np.asarray(node.inputs[2].values))
    bounds_dynamic = any(present(t) and not isinstance(t, gs.Constant) for t in node.inputs[1:])
    return np.full_like(v, np.nan) if bounds_dynamic else np.clip(v, lo, hi)


_erf = np.vectorize(math.erf, otypes=[float])

UNARY: dict[str, Callable[[np.ndarray, gs.Node], np.ndarray]] = {
    "Relu": lambda v, n: np.maximum(v, 0),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, v * _attr(n, "alpha", 0.01)),
    "PRelu": lambda v, n: np.maximum(v, 0),  # the slope of a removed channel is zeroed
    "Elu": lambda v, n: np.where(v >= 0, v, _attr(n, "alpha", 1.0) * np.expm1(np.minimum(v, 0))),
    "Celu": lambda v, n: np.where(v >= 0, v, _attr(n, "alpha", 1.0) * np.expm1(np.minimum(v, 0) / _attr(n, "alpha", 1.0))),
    "Selu": lambda v, n: _attr(n, "gamma", 1.0507) * np.where(v >= 0, v, _attr(n, "alpha", 1.67326) * np.expm1(np.minimum(v, 0))),
    "ThresholdedRelu": lambda v, n: np.where(v > _attr(n, "alpha", 1.0), v, 0.0),
    "Sigmoid": lambda v, n: 1 / (1 + np.exp(-v)),
    "HardSigmoid": lambda v, n: np.clip(_attr(n, "alpha", 0.2) * v + _attr(n, "beta", 0.5), 0, 1),
    "HardSwish": lambda v, n: v * np.clip(v / 6 + 0.5, 0, 1),
    "Tanh": lambda v, n: np.tanh(v),
    "Erf": lambda v, n: _erf(v),
    "Gelu": lambda v, n: 0.5 * v * (1 + _erf(v / math.sqrt(2))),
    "Mish": lambda v, n: v * np.tanh(np.log1p(np.exp(v))),
    "Softplus": lambda v, n: np.log1p(np.exp(v)),
    "Softsign": lambda v, n: v / (1 + np.abs(v)),
    "Clip": _clip,
    "Neg": lambda v, n: -v,
    "Abs": lambda v, n: np.abs(v),
    "Exp": lambda v, n: np.exp(v),
    "Sqrt": lambda v, n: np.sqrt(v),
    "Reciprocal": lambda v, n: np.where(v == 0, np.nan, 1 / np.where(v == 0, 1, v)),
    "Floor": lambda v, n: np.floor(v),
    "Ceil": lambda v, n: np.ceil(v),
    "Round": lambda v, n: np.round(v),
    "Sin": lambda v, n: np.sin(v),
    "Cos": lambda v, n: np.cos(v),
    "Sign": lambda v, n: np.sign(v),
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,
    "Cast": lambda v, n: v,
    "CastLike": lambda v, n: v,
}


def _build_rules() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for op, fn in UNARY.items():
        rules[op] = Rule(passthrough, Value.UNARY, unary=fn)
    rules["PRelu"] = Rule(elementwise, Value.UNARY, unary=UNARY["PRelu"])
    for op, kind in {"Add": "add", "Sum": "add", "Sub": "sub", "Mul": "mul", "Max": "max", "Min": "min"}.items():
        rules[op] = Rule(elementwise, Value.BINARY, binary=kind)
    rules["Div"] = Rule(elementwise, Value.BINARY, binary="div", divisor_inputs=(1,))
    rules["Pow"] = Rule(elementwise, Value.BINARY, binary="pow", divisor_inputs=(1,))
    rules["Where"] = Rule(elementwise, Value.UNKNOWN, divisor_inputs=(0,))
    rules["Conv"] = Rule(conv, Value.LINEAR, fixup=fix_conv_groups)
    rules["ConvTranspose"] = Rule(conv_transpose, Value.LINEAR, fixup=fix_conv_groups)
    rules["Gemm"] = Rule(gemm, Value.LINEAR)
    rules["MatMul"] = Rule(matmul, Value.LINEAR)
    rules["BatchNormalization"] = Rule(normalization, Value.LINEAR)
    rules["InstanceNormalization"] = Rule(normalization, Value.LINEAR)
    rules["Concat"] = Rule(concat, Value.COPY)
    rules["Split"] = Rule(split, Value.COPY, fixup=fix_split)
    rules["Slice"] = Rule(slice_, Value.COPY, fixup=fix_slice)
    rules["Transpose"] = Rule(transpose, Value.COPY)
    rules["Squeeze"] = Rule(squeeze_like, Value.COPY)
    rules["Unsqueeze"] = Rule(squeeze_like, Value.COPY)
    rules["Reshape"] = Rule(reshape, Value.COPY, fixup=fix_reshape)
    rules["Flatten"] = Rule(reshape, Value.COPY)
    for op in ("MaxPool", "GlobalMaxPool", "GlobalAveragePool"):
        rules[op] = Rule(spatial, Value.COPY)
    for op in ("AveragePool", "LpPool", "GlobalLpPool", "Pad"):
        rules[op] = Rule(spatial, Value.ZERO)
    rules["Resize"] = Rule(spatial, Value.COPY, fixup=fix_resize)
    rules["Upsample"] = Rule(spatial, Value.COPY)
    for op in ("ReduceMean", "ReduceMax", "ReduceMin"):
        rules[op] = Rule(reduce, Value.COPY)
    for op in ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"):
        rules[op] = Rule(reduce, Value.ZERO)
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        rules[op] = Rule(normalized_from(_softmax_axis), Value.UNKNOWN)
    rules["LayerNormalization"] = Rule(normalized_from(_layer_norm_axis), Value.UNKNOWN)
    rules["GroupNormalization"] = Rule(group_norm, Value.UNKNOWN)
    rules["Gather"] = Rule(gather, Value.LINEAR)
    rules["Shape"] = Rule(shape_of)
    for op in ("Size", "NonZero"):
        rules[op] = Rule(lambda n, p, a, c: Stop(f"{n.op} '{n.name}' reads the channel count"))
    rules["ConstantOfShape"] = Rule(neutral)
    return rules


RULES: dict[str, Rule] = _build_rules()
