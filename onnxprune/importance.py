"""How much each channel of a group matters: a criterion is a plain function (model, group) -> scores.

Magnitude criteria look at every weight slice of the group — producer rows, BN affine terms and the
consumer columns — not only the first conv. Each member's per-channel magnitudes are divided by their
mean before summing, so a big consumer layer does not drown a small producer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.channels import Group, Member
from onnxprune.errors import OnnxPruneError
from onnxprune.io import Model
from onnxprune.rules import AFFINE, IN, OUT, ZEROED_ROLES

Criterion = Callable[[Model, Group], np.ndarray]


def _per_channel(member: Member, values: np.ndarray, power: int, channels: int) -> np.ndarray:
    slices = np.abs(np.take(values, member.index, axis=member.axis).astype(np.float64)) ** power
    per_index = np.moveaxis(slices, member.axis, 0).reshape(len(member.index), -1).sum(axis=1)
    return np.bincount(member.channel, weights=per_index, minlength=channels)


def _magnitude(power: int) -> Criterion:
    def criterion(model: Model, group: Group) -> np.ndarray:
        weights = model.weights()
        score = np.zeros(group.channels)
        for member in group.weights():
            if member.role not in (OUT, AFFINE, IN) or member.tensor not in weights:
                continue
            values = np.asarray(weights[member.tensor].values)
            if not np.issubdtype(values.dtype, np.floating):
                continue
            part = _per_channel(member, values, power, group.channels)
            mean = part.mean()
            score += part / mean if mean > 0 else part
        return score

    return criterion


def bn_scale(model: Model, group: Group) -> np.ndarray:
    """|gamma| of the group's BatchNormalization layers; groups without BN fall back to L2."""
    scales = {n.inputs[1].name for n in model.graph.nodes if n.op == "BatchNormalization"
              and isinstance(n.inputs[1], gs.Constant)}
    weights = model.weights()
    score = np.zeros(group.channels)
    found = False
    for member in group.weights():
        if member.tensor in scales:
            found = True
            score += _per_channel(member, np.asarray(weights[member.tensor].values), 1, group.channels)
    return score if found else CRITERIA["l2"](model, group)


def zero_channels(model: Model, group: Group) -> list[int]:
    """Group channels whose producing slices are all exactly zero."""
    weights = model.weights()
    producing = [m for m in group.members if m.role in ZEROED_ROLES and m.tensor in weights]
    if not producing:
        return []
    zero = np.ones(group.channels, dtype=bool)
    for member in producing:
        values = np.asarray(weights[member.tensor].values)
        slices = np.moveaxis(np.take(values, member.index, axis=member.axis), member.axis, 0)
        nonzero = np.any(slices.reshape(len(member.index), -1) != 0, axis=1)
        zero[np.unique(member.channel[nonzero])] = False
    return np.flatnonzero(zero).tolist()


CRITERIA: dict[str, Criterion] = {"l1": _magnitude(1), "l2": _magnitude(2), "bn": bn_scale}


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion {name!r}; choose one of {', '.join(CRITERIA)}")
    return CRITERIA[name]
