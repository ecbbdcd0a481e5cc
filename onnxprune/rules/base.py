"""The vocabulary of channel rules: ties, bundles, stops, weight roles, the context rules read, and
the small helpers they share (see the package docstring for how they fit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
import onnx_graphsurgeon as gs

OUT, IN, AFFINE, KEEP, CONTRACT, SUMMED = "out", "in", "affine", "keep", "contract", "summed"
ZEROED_ROLES = (OUT, AFFINE)
WEIGHT_ROLES = (OUT, IN, AFFINE, KEEP)  # CONTRACT and SUMMED are the roles of activations
# SUMMED: an activation a node reduces over this axis (a mean, a norm): removed channels must be exact
# zeros there, so that slim pruning can rewrite the node over the kept channels (see `rules.norms`).


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
    NORMALIZED = "normalized"  # a normalization's affine terms: zero when its tied scale (and bias) are zeroed
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
                 attention: str = "dims", norms: str = "exact"):
        self.shapes = shapes
        self.opset = opset
        self.values = values or {}  # small integer tensors computed from Shape ops, at batch 1
        self.attention = attention  # "dims": prune head_dim uniformly over heads; "heads": whole heads
        self.norms = norms  # slim fixups of means over pruned channels: "exact" (original count) or "approximate"
        self.memo: dict[tuple[int, str], object] = {}
        self.added: list[gs.Node] = []  # nodes slim-time fixups add (surgery puts them in the graph)

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
FixupFn = Callable[[gs.Node, "Removed", Context], None]  # nodes it adds go to ctx.added
SeedsFn = Callable[[gs.Node], list[tuple[int, int]]]
MacsFn = Callable[[list[int], list[int], list[int]], int]
ViewFn = Callable[[gs.Node], object]  # a `rules.linear.LinearView` or None


@dataclass
class Rule:
    """One operator's registry entry: everything onnxprune knows about the operator.

    Channels (every entry): `bundles` maps a channel axis to the node's other tensors; `value` (with
    `unary` or `binary`) says how a removed channel's value passes through; `fixup` rewrites attributes
    and shape inputs after slim pruning (and returns the nodes it adds, when it rewrites the node into several).
    Layers with weights: `seeds(node)` lists (input index, axis) of the weights whose slices produce
    channels (where grouping starts); `macs(input dims, weight dims, output dims)` counts MACs at batch 1
    (`profile`), the weight being input `weight_input`; `out_axis` is the output-channel axis `inspect`
    shows; `params` lists the inputs whose elements count as params (None: every float weight; QLinearConv
    names its int8 weight and int32 bias, Q/DQ none: a scale is no weight).
    Analysis' mask mode: `zero_maker` (zeroed weights give exactly zero output channels), `zero_keeper`
    (zero inputs give zero outputs), `channelwise` (output channel c reads input channel c only).
    Matrix form: `linear(node)` gives the layer as a matrix product (`rules.linear.LinearView`, for
    reconstruction) or None; `fold(node)` gives such a view when constant input channels fold exactly
    into the layer's own bias (bias compensation), else None.
    Criteria: `scale_input`, the input holding a per-channel scale (the `bn` criterion).
    Runtime: `fused_rounding`, onnxruntime's graph optimizations replace the node with kernels that round
    otherwise (QDQ -> int8 kernels), and differently when a model is cut in parts: runs that must agree
    exactly (analysis' prefix and suffix against the whole model) run such models unoptimized.
    """

    bundles: RuleFn
    value: Value = Value.UNKNOWN
    unary: Callable[[np.ndarray, gs.Node], np.ndarray] | None = None
    binary: Callable[[list[np.ndarray]], np.ndarray] | None = None
    fixup: FixupFn | None = None
    seeds: SeedsFn | None = None
    macs: MacsFn | None = None
    weight_input: int = 1
    params: tuple[int, ...] | None = None
    out_axis: int | None = None
    zero_maker: bool = False
    zero_keeper: bool = False
    channelwise: bool = False
    linear: ViewFn | None = None
    fold: ViewFn | None = None
    scale_input: int | None = None
    fused_rounding: bool = False


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
    """True when an input exists and is computed at run time from tensor shapes (so it adapts to new
    channel counts); constants an exporter left unfolded (Unsqueeze of a Constant) are not."""
    return index < len(node.inputs) and present(node.inputs[index]) and reads_shapes(node.inputs[index])


def reads_shapes(tensor: gs.Tensor) -> bool:
    """True when a run-time value depends on a tensor's shape (some `Shape` or `Size` upstream) or on data;
    False for constants and for what an exporter computed from constants alone."""
    stack, seen = [tensor], set()
    while stack:
        current = stack.pop()
        if isinstance(current, gs.Constant) or id(current) in seen:
            continue
        seen.add(id(current))
        if not current.inputs:
            return True  # a graph input: data
        producer = current.inputs[0]
        if producer.op in ("Shape", "Size"):
            return True
        stack.extend(t for t in producer.inputs if present(t))
    return False


def shapes_or_stop(ctx: Context, *tensors: gs.Tensor) -> list[tuple[int, ...]] | Stop:
    shapes = []
    for tensor in tensors:
        shape = ctx.shape(tensor)
        if shape is None:
            return Stop(f"shape of '{tensor.name}' is unknown")
        shapes.append(shape)
    return shapes
