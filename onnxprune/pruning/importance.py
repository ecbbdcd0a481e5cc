"""How much each channel of a group matters: a criterion is a plain function (model, group) -> scores.

Magnitude criteria look at every weight slice of the group — producer rows, BN affine terms and the
consumer columns — not only the first conv. Each member's per-channel magnitudes are divided by their
mean before summing, so a big consumer layer does not drown a small producer.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.errors import OptionError
from onnxprune.graph.model import Model
from onnxprune.pruning.channels import Group, Member
from onnxprune.rules import AFFINE, IN, OUT, entry_for

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
    scales = _scales(model)
    weights = model.weights()
    score = np.zeros(group.channels)
    found = False
    for member in group.weights():
        if member.tensor in scales:
            found = True
            score += _per_channel(member, np.asarray(weights[member.tensor].values), 1, group.channels)
    return score if found else CRITERIA["l2"](model, group)


def _scales(model: Model) -> set[str]:
    """Names of the constant per-channel scales (the `scale_input` of an operator's registry entry)."""
    names = set()
    for node in model.graph.nodes:
        rule = entry_for(node)
        if rule is not None and rule.scale_input is not None and isinstance(node.inputs[rule.scale_input], gs.Constant):
            names.add(node.inputs[rule.scale_input].name)
    return names


def activation_weighted(energies: dict[str, np.ndarray]) -> Criterion:
    """The data-aware criterion `act`: per channel, sqrt(||W[:, c]||^2 * E[x_c^2]) summed over every layer
    that reads the group (`recover.scores`), each layer's part divided by its mean as for magnitudes.
    Groups that no such layer reads fall back to L2."""

    def criterion(model: Model, group: Group) -> np.ndarray:
        score = np.zeros(group.channels)
        found = False
        for member in group.weights():
            energy = energies.get(member.tensor)
            if member.role != IN or energy is None or len(energy) != member.size:
                continue
            part = np.bincount(member.channel, weights=np.sqrt(energy[member.index]), minlength=group.channels)
            mean = part.mean()
            score += part / mean if mean > 0 else part
            found = True
        return score if found else CRITERIA["l2"](model, group)

    return criterion


def ranked(scores: dict[str, np.ndarray]) -> Criterion:
    """A criterion from per-group scores worked out beforehand (`recover.greedy`: the removal order);
    groups without one fall back to L2."""

    def criterion(model: Model, group: Group) -> np.ndarray:
        return scores[group.id] if group.id in scores else CRITERIA["l2"](model, group)

    return criterion


CRITERIA: dict[str, Criterion] = {"l1": _magnitude(1), "l2": _magnitude(2), "bn": bn_scale}
DATA_CRITERIA = ("act", "greedy")  # need calibration data (`prune --data`); built by `recover.scores.data_criterion`


def get_criterion(name: str, data: bool = False) -> Criterion | None:
    """The weight-only criterion called `name`; with `data`, a data-aware name is accepted too (None: it is
    built from calibration data by `recover.scores.data_criterion`)."""
    if name in DATA_CRITERIA:
        if data:
            return None
        raise OptionError(f"{{criterion}} {name!r} looks at activations: it needs calibration data ({{data}})")
    if name not in CRITERIA:
        raise OptionError(f"{{criterion}} {name!r}: unknown criterion; choose one of "
                          f"{', '.join([*CRITERIA, *DATA_CRITERIA])}")
    return CRITERIA[name]
