"""Attention's layout: where whole heads go (`--attention heads`), and the key/value repeats of
grouped-query attention (`Expand`, `Tile`).

Heads: a Reshape that splits the hidden axis into (heads, head_dim), or merges them back, keeps whole
heads when it sits on an attention path (a MatMul of two activations within a few nodes); every such
Reshape picks its outer axis (heads; for grouped-query attention's [kv_heads, n_rep] -> heads merge the
key/value groups), so the query, key, value and score tensors all carry the same head index.

Grouped-query attention repeats each key/value head n_rep times (transformers' `repeat_kv`):
Unsqueeze -> Expand [B, kv_heads, n_rep, S, D] -> Reshape [B, heads, S, D], or Tile. A query head is
therefore tied to its key/value group: pruning whole key/value groups removes their n_rep query heads
with them (the K and V projections lose the group's rows, the output projection its heads' columns).
Query heads alone inside a group would leave their repeated key/value copies nonzero where the sparse
model reads them, which the value check refuses: whole groups are the unit.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    OUT,
    Bundle,
    Context,
    Port,
    Removed,
    Stop,
    Tie,
    norm_axis,
    shapes_or_stop,
    tie,
    weight_role,
)

REACH = 14  # nodes between an attention MatMul and the Reshapes that split or merge its heads


def near_attention(tensor: gs.Tensor, forward: bool = True, reach: int = REACH) -> bool:
    """True when a MatMul of two activations (attention scores or their product with V) is within
    `reach` nodes of `tensor`, downstream (`forward`) or upstream, not passing a layer with weights."""
    queue, seen = deque([(tensor, 0)]), {tensor.name}
    while queue:
        current, depth = queue.popleft()
        nodes = current.outputs if forward else current.inputs
        for node in nodes:
            if _is_attention_matmul(node):
                return True
            if depth >= reach or _has_weights(node):
                continue
            for nxt in node.outputs if forward else node.inputs:
                if not isinstance(nxt, gs.Constant) and nxt.name not in seen:
                    seen.add(nxt.name)
                    queue.append((nxt, depth + 1))
    return False


def _is_attention_matmul(node: gs.Node) -> bool:
    return node.op == "MatMul" and not any(isinstance(t, gs.Constant) for t in node.inputs)


def _has_weights(node: gs.Node) -> bool:
    return any(isinstance(t, gs.Constant) and t.values.ndim >= 2 and t.values.size > 1
               and np.issubdtype(t.values.dtype, np.floating) and t.values.shape[-1] > 1
               for t in node.inputs if node.op in ("MatMul", "Gemm", "Conv", "ConvTranspose"))


def heads_axis(ctx: Context, tensor: gs.Tensor, axes: list[int], forward: bool) -> int | None:
    """With `--attention heads`, the axis of a split or merge that attention keeps whole: the outer one
    (heads, or key/value groups); None when this Reshape is not on an attention path."""
    if ctx.attention != "heads" or not near_attention(tensor, forward):
        return None
    return axes[0]


# --- Expand and Tile: the key/value repeats ----------------------------------------------------------


def _data_and_output(node: gs.Node, port: Port, ctx: Context, second: str):
    """(input 0, output 0, their shapes) of an op whose second input only sizes the output, or a Stop."""
    if port.is_input and port.index != 0:
        return Stop(f"{second} is not a channel axis")
    x, y = node.inputs[0], node.outputs[0]
    shapes = shapes_or_stop(ctx, x, y)
    return shapes if isinstance(shapes, Stop) else (x, y, *shapes)


def expand(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Expand broadcasts input 0 to a shape: an axis the input has at full size passes through; an axis
    broadcast from size 1 (repeat_kv's n_rep) lives on the output alone."""
    parts = _data_and_output(node, port, ctx, "a shape")
    if isinstance(parts, Stop):
        return parts
    x, y, sx, sy = parts
    y_axis = axis + len(sy) - len(sx) if port.is_input else axis
    size = sy[y_axis]
    if size == 1:
        return Stop("single channel")
    if ctx.value(node.inputs[1]) is None:
        return Stop(f"Expand '{node.name}' shape depends on data")
    ties = [tie(y, y_axis, size)]
    a = y_axis - (len(sy) - len(sx))
    if a >= 0 and sx[a] == size:  # a constant input (ViT's class token) produces its channels: zeroed
        ties.append(tie(x, a, size, weight_role(x, OUT)))
    return [Bundle(size, ties)]


def fix_expand(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """A target that no longer gives the pruned output shape becomes a constant: 1 (keep the input's
    size, whatever it is at run time) on every axis the input has at full size, the size elsewhere."""
    x, y, target = node.inputs[0], node.outputs[0], node.inputs[1]
    values, expected, sx = ctx.value(target), ctx.shapes.get(y.name), ctx.shape(x)
    if values is None or expected is None or sx is None:
        return
    values = np.atleast_1d(values)
    if len(values) != len(expected) or all(v in (1, e) for v, e in zip(values, expected)):
        return
    padded = (1,) * (len(expected) - len(sx)) + tuple(sx)
    fixed = [1 if d == e else e for d, e in zip(padded, expected)]
    node.inputs[1] = gs.Constant(f"{y.name}_expand_shape", np.array(fixed, dtype=np.int64))


def tile(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Tile repeats the input r times along an axis: input channel c is output channels c + k*C."""
    parts = _data_and_output(node, port, ctx, "repeats")
    if isinstance(parts, Stop):
        return parts
    x, y, sx, sy = parts
    axis = norm_axis(axis, len(sx))
    c, n = sx[axis], sy[axis]
    if c == 0 or n % c:
        return Stop(f"Tile '{node.name}' has unknown repeats")
    outs = np.arange(n)
    return [Bundle(c, [tie(x, axis, c, weight_role(x, OUT)), Tie(y, axis, np.stack([outs % c, outs], 1))])]
