"""Operators over spatial or other axes: pooling, Resize, Pad, reductions (over the channel axis: see
`norms`), Softmax (which stops the axis it normalizes)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    Bundle,
    Context,
    Port,
    Removed,
    RuleFn,
    Stop,
    ints_input,
    norm_axis,
    present,
    shapes_or_stop,
    tie,
)
from onnxprune.rules.norms import reduced_channels


def spatial(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Pooling, Resize, Pad, DepthwiseLike: axes keep their channels when the op does not resize them."""
    x, y = node.inputs[0], node.outputs[0]
    if port.index != 0:
        return []
    shapes = shapes_or_stop(ctx, x, y)
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
        return reduced_channels(node, in_axis, shape, ctx)
    out_axis = in_axis if keep else in_axis - sum(a < in_axis for a in axes)
    return [Bundle(shape[in_axis], [tie(x, in_axis, shape[in_axis]), tie(y, out_axis, shape[in_axis])])]


def normalized_from(first_axis: Callable[[gs.Node, int, Context], int]) -> RuleFn:
    """Ops that normalize over axes >= some axis (Softmax): those axes stop."""

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


def softmax_axis(node: gs.Node, rank: int, ctx: Context) -> int:
    return norm_axis(int(node.attrs.get("axis", -1 if ctx.opset >= 13 else 1)), rank)

