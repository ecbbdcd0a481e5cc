"""Operators that move channels around: Concat, Split, Slice, Transpose, Squeeze/Unsqueeze,
Reshape/Flatten, and Shape (which reads a channel count)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.attention import heads_axis
from onnxprune.rules.base import (
    OUT,
    Bundle,
    Context,
    Port,
    Removed,
    Stop,
    Tie,
    computed_input,
    ints_input,
    norm_axis,
    present,
    reads_shapes,
    shapes_or_stop,
    tie,
    weight_role,
)

# --- layout --------------------------------------------------------------------------------------


def concat(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Concat: on the concat axis input k's channel j is output channel offset_k + j."""
    y = node.outputs[0]
    shapes = shapes_or_stop(ctx, y, *node.inputs)
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
    shapes = shapes_or_stop(ctx, x, *node.outputs)
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
    shapes = shapes_or_stop(ctx, x, y)
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
    shapes = shapes_or_stop(ctx, x, y)
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
    (groups, channels) of a channel shuffle prunes the same position in every group. With
    `--attention heads`, a split or merge on an attention path keeps the outer axis (whole heads,
    whole key/value groups; see `attention`).
    """
    x, y = node.inputs[0], node.outputs[0]
    if port.is_input and port.index != 0:
        return Stop("a shape is not a channel axis")
    shapes = shapes_or_stop(ctx, x, y)
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
        if key not in ctx.memo:
            heads = heads_axis(ctx, y, outs, forward=True)
            ctx.memo[key] = heads if heads is not None else _largest(sy, outs) if port.is_input else axis
        pick_out = ctx.memo[key]
    else:  # merge
        pick_out = outs[0]
        if key not in ctx.memo:
            heads = heads_axis(ctx, x, ins, forward=False)
            heads = heads if heads is not None else heads_axis(ctx, y, ins, forward=True)
            ctx.memo[key] = heads if heads is not None else axis if port.is_input else _largest(sx, ins)
        pick_in = ctx.memo[key]
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
    if concat_node is None or concat_node.op != "Concat":
        return  # nothing safe to rewrite; verification of the pruned model reports it
    if len(target.outputs) > 1:  # a target several Reshapes share (dynamo's q, k, v views): this one's own copy
        copy = gs.Variable(f"{y.name}_target", dtype=np.int64)
        concat_node = gs.Node("Concat", f"{y.name}_target_concat", dict(concat_node.attrs),
                              list(concat_node.inputs), [copy])
        ctx.added.append(concat_node)
        node.inputs[1] = copy
    _fix_concat_pieces(concat_node, {a: expected[a] for a in wrong}, ctx, y.name)


def _fix_concat_pieces(concat_node: gs.Node, wanted: dict[int, int], ctx: Context, name: str) -> None:
    """Rewrite the entries `wanted` (position in the Concat's output: value) in the pieces that hold them:
    a one-entry piece always (it is wrong as it is), a piece of several entries when it is a constant or
    computed from constants alone (one read from shapes, Shape(x)[0:2], holds run-time sizes to keep)."""
    offset = 0
    for k, piece in enumerate(list(concat_node.inputs)):
        value = ctx.value(piece)
        if value is None:
            return
        value = np.atleast_1d(value).astype(np.int64)
        mine = {a - offset: v for a, v in wanted.items() if offset <= a < offset + value.size}
        if mine and (value.size == 1 or not reads_shapes(piece)):
            for a, v in mine.items():
                value[a] = v
            concat_node.inputs[k] = gs.Constant(f"{name}_dims{offset}", value)
        offset += value.size


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
