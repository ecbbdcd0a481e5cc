"""Elementwise operators (broadcasting), pass-through ops, and the value of a removed channel through
unary functions (Sigmoid(0) = 0.5 must not silently reach a convolution)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    AFFINE,
    KEEP,
    Bundle,
    Context,
    Port,
    Stop,
    present,
    shapes_or_stop,
    tie,
    weight_role,
)

# --- elementwise and pass-through ------------------------------------------------------------------


KEPT_INPUTS = {"Div": (1,), "Pow": (1,), "Where": (0,)}  # divisors, exponents, conditions: never zeroed


def elementwise(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """Numpy broadcasting: axes align from the right; an input of size 1 on the axis is broadcast."""
    out = node.outputs[0]
    tensors = [t for t in node.inputs if present(t)]
    shapes = shapes_or_stop(ctx, out, *tensors)
    if isinstance(shapes, Stop):
        return shapes
    out_shape, in_shapes = shapes[0], shapes[1:]
    here = ctx.shape(port.tensor(node))
    out_axis = axis + len(out_shape) - len(here) if port.is_input else axis
    size = out_shape[out_axis]
    if size == 1:
        return Stop("single channel")
    ties = [tie(out, out_axis, size)]
    for k, (tensor, shape) in enumerate(zip(tensors, in_shapes)):
        a = out_axis - (len(out_shape) - len(shape))
        if a < 0 or shape[a] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        if shape[a] != size:
            return Stop(f"{node.op} '{node.name}' has mismatched sizes on the channel axis")
        role = KEEP if k in KEPT_INPUTS.get(node.op, ()) else AFFINE
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


def is_nan(v: np.ndarray, node: gs.Node) -> np.ndarray:
    """IsNaN: a removed channel's known value is a number, so False (0); NaN here means "unknown" and
    stays so (np.isnan alone would call an unknown value True)."""
    return np.where(np.isnan(v), np.nan, 0.0)


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
    "IsNaN": is_nan,
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,
    "Cast": lambda v, n: v,
    "CastLike": lambda v, n: v,
}


# --- values of removed channels through arithmetic --------------------------------------------------
# Each function takes the values of the node's inputs (one array over the bundle each; NaN: unknown).


def _second(operands: list[np.ndarray]) -> np.ndarray:
    return operands[1] if len(operands) > 1 else operands[0]


def _mul(operands: list[np.ndarray]) -> np.ndarray:
    """A zero factor makes zero, whatever the others (unknown included)."""
    return np.where(np.any([o == 0 for o in operands], axis=0), 0.0, np.prod(operands, axis=0))


BINARY: dict[str, Callable[[list[np.ndarray]], np.ndarray]] = {
    "Add": lambda ops: np.sum(ops, axis=0),
    "Sum": lambda ops: np.sum(ops, axis=0),
    "Sub": lambda ops: ops[0] - _second(ops),
    "Mul": _mul,
    "Div": lambda ops: np.where(ops[0] == 0, 0.0, ops[0] / _second(ops)),
    "Pow": lambda ops: np.where((ops[0] == 0) & (_second(ops) > 0), 0.0, ops[0] ** _second(ops)),
    "Max": lambda ops: np.max(ops, axis=0),
    "Min": lambda ops: np.min(ops, axis=0),
}
