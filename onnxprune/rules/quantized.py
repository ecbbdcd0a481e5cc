"""Quantized models: the Q/DQ pairs on activations of QDQ models, and the QLinear operators of the
QOperator format.

QDQ (what onnxruntime's `quantize_static` writes by default): weights are integers behind a
`DequantizeLinear`, which the loader lifts to float weights (`graph.lift`), so the layers are the float
layers the other entries know. What is left in the graph are `QuantizeLinear -> DequantizeLinear` pairs on
activations: channel c in is channel c out; a per-channel scale and zero point along the pruned axis are
sliced with it (kept, never zeroed). A removed channel is 0, quantizes to the zero point and dequantizes
back to exactly 0; any other value is called unknown (rounding and saturation are not modelled).

QOperator (`QLinearConv`, `QLinearMatMul`): counted (MACs, integer weights as params) but not pruned: a
removed channel is the output zero point there, not 0, so every rule that reads "zero" would need the
zero point. Their groups stop with the reason, which names the way out (quantize in QDQ format).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import KEEP, OUT, Bundle, Context, Port, Stop, norm_axis, present, tie, weight_role
from onnxprune.rules.weighted import conv_macs, matmul_macs


def qdq(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """QuantizeLinear / DequantizeLinear on an activation: channels pass; a per-channel scale and zero
    point along the arriving axis go with them (sliced, never zeroed)."""
    x, y = node.inputs[0], node.outputs[0]
    shape = ctx.shape(x) or ctx.shape(y)
    if shape is None:
        return Stop(f"shape of '{x.name}' is unknown")
    params = [t for t in node.inputs[1:3] if present(t)]
    per_channel = ctx.shape(params[0]) not in (None, (), (1,))
    if int(node.attrs.get("block_size", 0)):
        return Stop(f"{node.op} '{node.name}' quantizes in blocks")
    quant_axis = norm_axis(int(node.attrs.get("axis", 1)), len(shape)) if per_channel else None
    if port.is_input and port.index > 0:
        if quant_axis is None:
            return []
        axis = quant_axis
    n = shape[axis]
    ties = [tie(x, axis, n), tie(y, axis, n)]
    if axis == quant_axis:
        ties += [tie(t, 0, n, weight_role(t, KEEP)) for t in params]
    return [Bundle(n, ties)]


def quantize_value(operands: list[np.ndarray]) -> np.ndarray:
    """A removed channel's value through QuantizeLinear: 0 becomes the zero point; anything else unknown."""
    x = operands[0]
    point = operands[2] if len(operands) > 2 else np.zeros_like(x)
    return np.where(x == 0, point, np.nan)


def dequantize_value(operands: list[np.ndarray]) -> np.ndarray:
    """Through DequantizeLinear: the zero point becomes 0 again; anything else unknown."""
    x = operands[0]
    point = operands[2] if len(operands) > 2 else np.zeros_like(x)
    return np.where(x == point, 0.0, np.nan)


# --- QOperator format ---------------------------------------------------------------------------------
# QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, bias); QLinearMatMul(a, a_scale, a_zp,
# b, b_scale, b_zp, y_scale, y_zp). The integer weight is input 3.

WEIGHT = 3


def qlinear(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """The weight's output channels reach the output (so the group exists and shows why it stops); every
    other arrival stops: a removed channel is the zero point here, not 0."""
    w, y = node.inputs[WEIGHT], node.outputs[0]
    reason = Stop(f"{node.op} '{node.name}' (QOperator format) is not pruned: quantize in QDQ format "
                  "(quantize_static(..., quant_format=QuantFormat.QDQ)) to prune it")
    if not (port.is_input and port.index == WEIGHT) or not isinstance(w, gs.Constant):
        return reason
    w_axis = 0 if node.op == "QLinearConv" else w.values.ndim - 1
    y_shape = ctx.shape(y)
    if axis != w_axis or y_shape is None:
        return reason
    y_axis = 1 if node.op == "QLinearConv" else len(y_shape) - 1
    n = w.values.shape[w_axis]
    return [Bundle(n, [tie(w, w_axis, n, OUT), tie(y, y_axis, n)])]


def qlinear_conv_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(WEIGHT, 0)]


def qlinear_matmul_seeds(node: gs.Node) -> list[tuple[int, int]]:
    return [(WEIGHT, -1)]


qlinear_conv_macs = conv_macs  # from (input, weight, output) dims, the weight being input 3
qlinear_matmul_macs = matmul_macs
