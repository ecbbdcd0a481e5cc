"""The value a removed channel takes downstream (NaN: unknown), node by node, from each operator's entry.

In the sparse model a removed channel is zero where its producer writes it; downstream it may not be
(Sigmoid(0) = 0.5, a bias added after the producer). `channels` follows these values through the graph
in topological order — `space_values` gives a bundle's values from the values on the node's inputs and the
entry's `value` kind (`Value`) — and refuses a group whose removed channels a layer would read as nonzero
(`unread_nonzero`), unless that layer folds the constant into its bias.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import CONTRACT, IN, SUMMED, ZEROED_ROLES, Bundle, Rule, Tie, Value

Key = tuple[str, int]  # (tensor name, axis)


def tie_values(tie: Tie, values: dict[Key, np.ndarray], size: int) -> np.ndarray:
    """Value of a removed channel at each bundle index, as seen through one tie (NaN: unknown)."""
    if isinstance(tie.tensor, gs.Constant):
        if tie.role in ZEROED_ROLES:
            return np.zeros(size)
        if tie.role == IN:
            return np.full(size, np.nan)  # consumer weights: their value does not matter
        along = np.moveaxis(np.asarray(tie.tensor.values, dtype=np.float64), tie.axis, 0)
        flat = along.reshape(along.shape[0], -1)
        uniform = np.where(np.all(flat == flat[:, :1], axis=1), flat[:, 0], np.nan)
        per_atom = uniform
    else:
        per_atom = values[(tie.tensor.name, tie.axis)]
    low, high = np.full(size, np.inf), np.full(size, -np.inf)
    pairs = tie.pairs[tie.pairs[:, 1] < len(per_atom)]  # an axis of unknown size holds no atoms
    with np.errstate(invalid="ignore"):
        np.minimum.at(low, pairs[:, 0], per_atom[pairs[:, 1]])
        np.maximum.at(high, pairs[:, 0], per_atom[pairs[:, 1]])
    return np.where(low == high, low, np.nan)


def inputs_of(node: gs.Node, bundle: Bundle) -> list[Tie]:
    """The bundle's ties on the node's inputs."""
    return [t for t in bundle.ties if any(t.tensor is i for i in node.inputs)]


def space_values(rule: Rule, node: gs.Node, bundle: Bundle, values: dict[Key, np.ndarray]) -> np.ndarray:
    """The value of a removed channel at each index of a bundle of `node`, by its entry's `value` kind."""
    size = bundle.size
    inputs = inputs_of(node, bundle)
    seen = [tie_values(t, values, size) for t in inputs]
    if rule.value is Value.LINEAR:
        return np.where(np.any([s == 0 for s in seen], axis=0), 0.0, np.nan) if seen else np.full(size, np.nan)
    if rule.value is Value.BINARY:
        return _binary(node, rule, bundle, values)
    if rule.value is Value.NORMALIZED:  # the rule ties scale and bias (zeroed) only when both are per channel
        affine = any(isinstance(t.tensor, gs.Constant) and t.role in ZEROED_ROLES for t in inputs)
        return np.zeros(size) if affine else np.full(size, np.nan)
    copy = _agree(seen, size)
    if rule.value is Value.COPY:
        return copy
    if rule.value is Value.ZERO:
        return np.where(copy == 0, 0.0, np.nan)
    if rule.value is Value.UNARY:
        with np.errstate(all="ignore"):
            return rule.unary(copy, node).astype(np.float64)
    return np.full(size, np.nan)


def _agree(seen: list[np.ndarray], size: int) -> np.ndarray:
    if not seen:
        return np.full(size, np.nan)
    stacked = np.stack(seen)
    return np.where(np.all(stacked == stacked[:1], axis=0), stacked[0], np.nan)


def _binary(node: gs.Node, rule: Rule, bundle: Bundle, values: dict[Key, np.ndarray]) -> np.ndarray:
    """The entry's arithmetic over every input's value: a tied input's, a uniform constant's, else unknown."""
    size = bundle.size
    operands = []
    for tensor in node.inputs:
        tied = next((t for t in bundle.ties if t.tensor is tensor), None)
        if tied is not None:
            operands.append(tie_values(tied, values, size))
        elif isinstance(tensor, gs.Constant) and np.asarray(tensor.values).size:
            flat = np.asarray(tensor.values, dtype=np.float64).reshape(-1)
            operands.append(np.full(size, flat[0] if np.all(flat == flat[0]) else np.nan))
        else:
            operands.append(np.full(size, np.nan))
    with np.errstate(all="ignore"):
        return rule.binary(operands)


def unread_nonzero(node: gs.Node, bundle: Bundle, values: dict[Key, np.ndarray]) -> np.ndarray:
    """Per bundle index: the nonzero (or unknown) value a layer would read; 0 where all is well."""
    roles = {t.role for t in bundle.ties}
    size = bundle.size
    if IN in roles:
        readers = [t for t in inputs_of(node, bundle) if not isinstance(t.tensor, gs.Constant)]
        seen = [tie_values(t, values, size) for t in readers]
        return np.nan_to_num(np.max(np.abs(seen), axis=0), nan=np.inf) if seen else np.zeros(size)
    if SUMMED in roles:  # a mean or norm over the axis: removed channels must be exact zeros there
        summed = [tie_values(t, values, size) for t in inputs_of(node, bundle) if t.role == SUMMED]
        return np.nan_to_num(np.max(np.abs(summed), axis=0), nan=np.inf)
    if CONTRACT in roles:
        a, b = (tie_values(t, values, size) for t in inputs_of(node, bundle)[:2])
        both = np.where((a == 0) | (b == 0), 0.0, np.abs(a * b))
        return np.nan_to_num(both, nan=np.inf)
    return np.zeros(size)
