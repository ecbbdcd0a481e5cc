"""Layers with weights: Conv, ConvTranspose, Gemm, MatMul, BatchNorm/InstanceNorm, Gather (embeddings)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    AFFINE,
    CONTRACT,
    IN,
    KEEP,
    OUT,
    Bundle,
    Context,
    Port,
    Removed,
    Stop,
    Tie,
    identity,
    norm_axis,
    present,
    shapes_or_stop,
    tie,
    weight_role,
)

# --- weighted layers -------------------------------------------------------------------------------


def contract_role(a: gs.Tensor, b: gs.Tensor) -> str | None:
    """The role of an activation summed over in a product: CONTRACT when both operands are activations
    (attention: each side's removed channels must be zero where the other is not); none when the other
    operand is a weight (roles IN and OUT are for weights only)."""
    return None if isinstance(a, gs.Constant) or isinstance(b, gs.Constant) else CONTRACT


def _conv_parts(node: gs.Node) -> tuple[gs.Tensor, gs.Constant, gs.Tensor | None, gs.Tensor, int] | Stop:
    """(input, weight, bias or None, output, group) of a Conv or ConvTranspose with constant weights."""
    w = node.inputs[1]
    if not isinstance(w, gs.Constant):
        return Stop(f"{node.op} '{node.name}' has weights computed at run time")
    bias = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    return node.inputs[0], w, bias, node.outputs[0], int(node.attrs.get("group", 1))


def conv(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Conv: output channels tie weight rows and bias; input channels tie weight columns.

    Depthwise (one input channel per group) ties output channel o to input channel o // multiplier.
    Grouped convs keep their group count: channel q of every group goes together, so groups stay equal.
    """
    parts = _conv_parts(node)
    if isinstance(parts, Stop):
        return parts
    x, w, bias, y, groups = parts
    out_ch, in_per_group = w.values.shape[0], w.values.shape[1]
    in_ch = in_per_group * groups
    out_per_group = out_ch // groups
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
    parts = _conv_parts(node)
    if isinstance(parts, Stop):
        return parts
    x, w, bias, y, groups = parts
    in_ch, out_per_group = w.values.shape[0], w.values.shape[1]
    out_ch = out_per_group * groups
    in_per_group = in_ch // groups
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
    shapes = shapes_or_stop(ctx, a, b, y)
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
        role = contract_role(a, b)
        return [Bundle(k, [tie(a, a_k, k, weight_role(a, IN) or role), tie(b, b_k, k, weight_role(b, IN) or role)])]
    return Stop(f"axis {axis} of '{tensor.name}' is the row axis of Gemm '{node.name}'")


def matmul(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """MatMul with numpy semantics: A[..., M, K] @ B[..., K, N] -> Y[..., M, N], batch axes broadcast."""
    a, b, y = node.inputs[0], node.inputs[1], node.outputs[0]
    shapes = shapes_or_stop(ctx, a, b, y)
    if isinstance(shapes, Stop):
        return shapes
    sa, sb, sy = shapes
    if len(sa) < 2 or len(sb) < 2:
        return Stop(f"MatMul '{node.name}' with a vector operand is not supported")
    ra, rb, ry = len(sa), len(sb), len(sy)
    tensor = port.tensor(node)
    if (tensor is a and axis == ra - 1) or (tensor is b and axis == rb - 2):
        k = sa[-1]
        role = contract_role(a, b)
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


def gather(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Gather (embeddings): axes of the data other than the gathered one carry over to the output."""
    data, indices, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if port.is_input and port.index == 1:
        return Stop(f"Gather '{node.name}' indices are not channels")
    shapes = shapes_or_stop(ctx, data, indices, y)
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
    if groups <= 1 or not isinstance(w, gs.Constant):
        return  # a weight computed at run time (weight norm): the rule refused its channels, nothing moved
    if node.op == "Conv" and w.values.shape[1] == 1:
        old_in = removed.old_shapes[node.inputs[0].name][1]
        node.attrs["group"] = old_in - removed.of(node.inputs[0], 1).size
    elif node.op == "ConvTranspose" and groups == removed.old_shapes[node.inputs[0].name][1]:
        node.attrs["group"] = w.values.shape[0]


# --- where groups start, and what the layers cost -------------------------------------------------------
# A seed is (input index, axis) of a weight whose slices produce channels; MACs are counted at batch 1
# from the dims of input 0, the weight (input 1) and output 0, after pruning when the caller asks so.


def conv_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(1, 0)]


def conv_transpose_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(1, 1), (1, 0)]


def gemm_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(1, 0 if node.attrs.get("transB", 0) else 1)]


def matmul_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(1, -1), (0, -2)]


def gather_seeds(node: gs.Node) -> list[tuple[int, int]]:
    """An embedding table (rows gathered): its columns are channels."""
    return [(0, -1)] if int(node.attrs.get("axis", 0)) == 0 else []


def _prod(dims: list[int]) -> int:
    return int(np.prod(dims, dtype=np.int64))


def conv_macs(x: list[int], w: list[int], y: list[int]) -> int:
    """Every weight element once per output position."""
    return _prod(w) * _prod(y[2:])


def conv_transpose_macs(x: list[int], w: list[int], y: list[int]) -> int:
    """Every weight element once per input position."""
    return _prod(w) * _prod(x[2:])


def gemm_macs(a: list[int], b: list[int], y: list[int]) -> int:
    return y[0] * _prod(b)


def matmul_macs(a: list[int], b: list[int], y: list[int]) -> int:
    return _prod(y) * a[-1]
