"""Layers whose output is a linear function of one activation input: Conv, Gemm, MatMul with a weight.

Reconstruction (`onnxprune.recover`) re-solves such a layer's weights by least squares, so it needs to
see the layer as a matrix product: `y[rows, out] = features[rows, F] @ matrix[F, out] (+ bias)`, per
group of a grouped conv. A `LinearView` gives exactly that for one node — the feature rows of sampled
output positions (im2col for convs), the weight as a matrix and back, where an intercept can go, and
which input channel each feature reads. It knows nothing about pruning or data.

The same view folds constant input channels into the layer's bias (slim-time bias compensation): a
channel that holds the constant v everywhere adds `v * matrix row` to every output, which the layer's
own bias can take exactly when it sees the channel alike at every position (`conv_fold`, `gemm_fold`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import present


@dataclass
class LinearView:
    """One layer as `groups` independent matrix products over `features` input features each.

    Attributes:
        node: the layer.
        weight: its constant weight tensor (values are read and written through `matrix`/`set_matrix`).
        groups: independent products (a grouped conv's groups; 1 otherwise).
        in_channels: channels of the activation input (on `in_axis`), all groups together.
        out_channels: output channels, all groups together (group g owns a contiguous block).
        intercept: the constant this layer's outputs can absorb a per-output offset into, or None.
    """

    node: gs.Node
    weight: gs.Constant
    groups: int
    in_channels: int
    out_channels: int
    in_axis: int
    weight_axes: tuple[int, int]  # (input-feature axis, output axis) of the weight tensor
    intercept: gs.Constant | None = None
    intercept_sign: float = 1.0  # -1 when the intercept is a BatchNormalization mean (subtracted)

    @property
    def input(self) -> gs.Tensor:
        return self.node.inputs[0]

    @property
    def features(self) -> int:
        """Features per group (input channels per group times kernel elements)."""
        return self.in_channels // self.groups * self.kernel_size

    @property
    def kernel_size(self) -> int:
        return 1

    def feature_channel(self) -> np.ndarray:
        """The input channel (within its group) each feature of a group reads."""
        return np.repeat(np.arange(self.in_channels // self.groups), self.kernel_size)

    def positions(self, x: np.ndarray) -> int:
        """Output positions per sample for an input activation `x`."""
        return int(np.prod(x.shape[:-1][1:])) if x.ndim > 1 else 1

    def rows(self, x: np.ndarray, samples: np.ndarray, where: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        """Feature rows [groups, R, features] at output positions `where` (flat) of samples `samples`."""
        flat = x.reshape(x.shape[0], -1, x.shape[-1])
        return flat[samples, where][None].astype(dtype)

    def matrix(self) -> np.ndarray:
        """The weight as [groups, features, out_channels / groups] (float64)."""
        raise NotImplementedError

    def set_matrix(self, matrix: np.ndarray) -> None:
        raise NotImplementedError

    def bias(self) -> np.ndarray:
        """The per-output offset the layer adds (zeros when it has none)."""
        if self.intercept is None:
            return np.zeros(self.out_channels)
        return self.intercept_sign * np.asarray(self.intercept.values, dtype=np.float64).reshape(-1)

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Put the weight's (and the intercept's) values back on exit: to read the layer as it would be
        with other values, or other values as the layer would store them, without changing the model."""
        weight = self.weight.values
        intercept = self.intercept.values if self.intercept is not None else None
        try:
            yield
        finally:
            self.weight.values = weight
            if self.intercept is not None:
                self.intercept.values = intercept

    def set_bias(self, bias: np.ndarray) -> None:
        values = self.intercept.values
        self.intercept.values = (self.intercept_sign * bias).reshape(values.shape).astype(values.dtype)

    def offset(self, values: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """What the constants `values` on input `channels` add to each output (a `fold` view: one group,
        one feature per channel)."""
        return np.asarray(values, dtype=np.float64) @ self.matrix()[0][channels]

    def add_bias(self, offset: np.ndarray) -> None:
        """Add a per-output offset through the layer's own bias input (layers that have one)."""
        raise NotImplementedError(f"{self.node.op} '{self.node.name}' has no bias input")

    def _add_to_input(self, index: int, offset: np.ndarray, replace: bool = False) -> None:
        """Add `offset` to the constant at input `index` (or replace it; append one when it is absent)."""
        node, dtype = self.node, self.weight.values.dtype
        old = node.inputs[index] if len(node.inputs) > index and present(node.inputs[index]) else None
        if old is None or replace:
            bias = offset.astype(dtype)
        else:
            bias = (np.asarray(old.values, dtype=np.float64) + offset.reshape(-1)).astype(dtype)
            if np.asarray(old.values).ndim == 2:  # Gemm's C as [1, N]
                bias = bias.reshape(1, -1)
        constant = gs.Constant(f"{(old.name if old is not None else self.weight.name)}_compensated", bias)
        if old is None:
            node.inputs.append(constant)
        else:
            node.inputs[index] = constant


@dataclass
class ConvView(LinearView):
    """Conv with constant weights [O, C/g, k...]: features are (channel, kernel element) pairs (im2col)."""

    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    auto_pad: str = "NOTSET"
    pads: tuple[int, ...] = ()

    @property
    def kernel_size(self) -> int:
        return int(np.prod(self.kernel)) if self.kernel else 1

    def _pads(self, spatial: tuple[int, ...]) -> list[tuple[int, int]]:
        rank = len(spatial)
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pairs = []
            for size, k, s, d in zip(spatial, self.kernel, self.strides, self.dilations):
                out = math.ceil(size / s)
                total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
                small, big = total // 2, total - total // 2
                pairs.append((small, big) if self.auto_pad == "SAME_UPPER" else (big, small))
            return pairs
        if self.auto_pad == "VALID" or not self.pads:
            return [(0, 0)] * rank
        return [(self.pads[i], self.pads[i + rank]) for i in range(rank)]

    def _out_shape(self, spatial: tuple[int, ...], pads: list[tuple[int, int]]) -> tuple[int, ...]:
        return tuple((size + a + b - ((k - 1) * d + 1)) // s + 1
                     for size, (a, b), k, s, d in zip(spatial, pads, self.kernel, self.strides, self.dilations))

    def positions(self, x: np.ndarray) -> int:
        spatial = tuple(x.shape[2:])
        return int(np.prod(self._out_shape(spatial, self._pads(spatial))))

    def rows(self, x: np.ndarray, samples: np.ndarray, where: np.ndarray, dtype: type = np.float64) -> np.ndarray:
        spatial = tuple(x.shape[2:])
        pads = self._pads(spatial)
        out = self._out_shape(spatial, pads)
        padded = np.pad(x, [(0, 0), (0, 0), *pads]) if any(a or b for a, b in pads) else x
        patches = self._windows(padded, out)[(samples, slice(None), *np.unravel_index(where, out))]  # [R, C, k...]
        r = patches.shape[0]
        per_group = self.in_channels // self.groups
        patches = patches.reshape(r, self.groups, per_group * self.kernel_size)
        return np.ascontiguousarray(patches.transpose(1, 0, 2), dtype=dtype)

    def _windows(self, padded: np.ndarray, out: tuple[int, ...]) -> np.ndarray:
        """A view [N, C, *out, *kernel] of a padded input: the input elements each output position reads.
        Indexing it by (sample, :, position) gathers whole patches, 2-5x faster than one index per element."""
        span = [(k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations)]
        windows = np.lib.stride_tricks.sliding_window_view(padded, span, axis=tuple(range(2, padded.ndim)))
        steps = [slice(0, o * s, s) for o, s in zip(out, self.strides)] + [slice(None, None, d) for d in self.dilations]
        return windows[(slice(None), slice(None), *steps)]

    def matrix(self) -> np.ndarray:
        w = np.asarray(self.weight.values, dtype=np.float64)
        out_per_group = self.out_channels // self.groups
        return w.reshape(self.groups, out_per_group, -1).transpose(0, 2, 1)

    def set_matrix(self, matrix: np.ndarray) -> None:
        w = self.weight.values
        self.weight.values = matrix.transpose(0, 2, 1).reshape(w.shape).astype(w.dtype)

    def add_bias(self, offset: np.ndarray) -> None:
        self._add_to_input(2, offset)

    @property
    def pointwise(self) -> bool:
        """1x1 without padding: every output position reads one input position, all alike."""
        return self.kernel_size == 1 and self.auto_pad in ("NOTSET", "VALID") and not any(self.pads)


@dataclass
class GemmView(LinearView):
    """Gemm with a constant B: y = alpha * A @ B' (+ beta * C); the matrix is alpha * B' [K, N]."""

    alpha: float = 1.0
    trans_b: bool = False

    def matrix(self) -> np.ndarray:
        b = np.asarray(self.weight.values, dtype=np.float64)
        return (self.alpha * (b.T if self.trans_b else b))[None]

    def set_matrix(self, matrix: np.ndarray) -> None:
        b = matrix[0] / self.alpha
        self.weight.values = (b.T if self.trans_b else b).astype(self.weight.values.dtype)

    def add_bias(self, offset: np.ndarray) -> None:
        """C is scaled by beta; with beta = 0 it counts for nothing, so the offset replaces it (beta = 1)."""
        beta = float(self.node.attrs.get("beta", 1.0))
        if beta == 0.0:
            self.node.attrs["beta"] = 1.0
            self._add_to_input(2, offset, replace=True)
        else:
            self._add_to_input(2, offset / beta)


@dataclass
class MatMulView(LinearView):
    """MatMul of an activation [..., K] by a constant 2-D weight [K, N]."""

    def matrix(self) -> np.ndarray:
        return np.asarray(self.weight.values, dtype=np.float64)[None]

    def set_matrix(self, matrix: np.ndarray) -> None:
        self.weight.values = matrix[0].astype(self.weight.values.dtype)


def _only_reader(tensor: gs.Tensor) -> gs.Node | None:
    readers = list(tensor.outputs)
    return readers[0] if len(readers) == 1 else None


def _float_constant(tensor: gs.Tensor | None, size: int) -> gs.Constant | None:
    if isinstance(tensor, gs.Constant) and np.issubdtype(tensor.values.dtype, np.floating) \
            and tensor.values.size == size and max(tensor.values.shape, default=1) == size:
        return tensor
    return None


def _bn_mean(node: gs.Node, size: int) -> gs.Constant | None:
    """A BatchNormalization that alone reads this layer's output: an offset folds into its mean."""
    reader = _only_reader(node.outputs[0])
    if reader is not None and reader.op == "BatchNormalization" and reader.inputs[0] is node.outputs[0] \
            and len(reader.inputs) >= 4:
        return _float_constant(reader.inputs[3], size)
    return None


def _added_constant(node: gs.Node, size: int) -> gs.Constant | None:
    """A bias added right after the layer (MatMul + Add, as exporters write Linear)."""
    reader = _only_reader(node.outputs[0])
    if reader is not None and reader.op == "Add" and len(reader.inputs) == 2:
        other = reader.inputs[1] if reader.inputs[0] is node.outputs[0] else reader.inputs[0]
        return _float_constant(other, size)
    return None


def conv_view(node: gs.Node) -> LinearView | None:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if not isinstance(w, gs.Constant) or w.values.ndim < 3 or not np.issubdtype(w.values.dtype, np.floating):
        return None
    groups = int(node.attrs.get("group", 1))
    rank = w.values.ndim - 2
    kernel = tuple(int(k) for k in w.values.shape[2:])
    bias = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    out = w.values.shape[0]
    intercept, sign = _float_constant(bias, out), 1.0
    if bias is None:
        intercept, sign = _bn_mean(node, out), -1.0
    if bias is not None and intercept is None:
        return None  # a bias computed at run time
    return ConvView(node, w, groups, w.values.shape[1] * groups, out, 1, (1, 0), intercept, sign, kernel,
                    tuple(int(s) for s in node.attrs.get("strides", [1] * rank)),
                    tuple(int(d) for d in node.attrs.get("dilations", [1] * rank)),
                    str(node.attrs.get("auto_pad", "NOTSET")), tuple(int(p) for p in node.attrs.get("pads", [])))


def _gemm(node: gs.Node) -> GemmView | None:
    """The Gemm as a matrix product, without an intercept: None unless B is a constant float matrix."""
    b = node.inputs[1]
    if not isinstance(b, gs.Constant) or node.attrs.get("transA", 0) or b.values.ndim != 2 \
            or not np.issubdtype(b.values.dtype, np.floating):
        return None
    trans_b = bool(node.attrs.get("transB", 0))
    k, n = (b.values.shape[1], b.values.shape[0]) if trans_b else b.values.shape
    return GemmView(node, b, 1, k, n, 1, (1, 0) if trans_b else (0, 1), None, 1.0,
                    float(node.attrs.get("alpha", 1.0)), trans_b)


def gemm_view(node: gs.Node) -> LinearView | None:
    view = _gemm(node)
    if view is None:
        return None
    c = node.inputs[2] if len(node.inputs) > 2 and present(node.inputs[2]) else None
    beta = float(node.attrs.get("beta", 1.0))
    view.intercept = _float_constant(c, view.out_channels) if beta == 1.0 else None
    if c is not None and view.intercept is None:
        return None  # a broadcast scalar, scaled or computed C: leave the layer alone
    if c is None:
        view.intercept = _added_constant(node, view.out_channels)
    return view


def matmul_view(node: gs.Node) -> LinearView | None:
    b = node.inputs[1]
    if not isinstance(b, gs.Constant) or isinstance(node.inputs[0], gs.Constant) or b.values.ndim != 2 \
            or not np.issubdtype(b.values.dtype, np.floating):
        return None
    k, n = b.values.shape
    return MatMulView(node, b, 1, k, n, -1, (0, 1), _added_constant(node, n))


def conv_fold(node: gs.Node) -> LinearView | None:
    """An ungrouped 1x1 Conv without padding sees a constant input channel alike at every position."""
    view = conv_view(node)
    return view if view is not None and view.groups == 1 and view.pointwise else None


def gemm_fold(node: gs.Node) -> LinearView | None:
    """A Gemm (any beta and C: the bias input is C itself) sees a constant input channel in every row."""
    return _gemm(node)
