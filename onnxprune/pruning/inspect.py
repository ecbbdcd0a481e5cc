"""`inspect`: per-layer MACs and params, channel groups, and why a group cannot be pruned.

Collecting (`inspect_model`) and formatting (`format_report`) are separate: the library returns data,
the CLI prints it, and `--json` is the contract other tools read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.pruning.channels import Group, find_groups
from onnxprune.pruning.cost import layer_costs, totals
from onnxprune.pruning.plan import Plan
from onnxprune.rules import CONTRACT, IN, OUT, entry_for
from onnxprune.tables import Column, render


@dataclass
class LayerRow:
    node: str
    op: str
    channels: int | None
    macs: int
    params: int
    group: str | None
    prunable: bool
    reason: str | None


@dataclass
class Report:
    model: str
    macs: int
    params: int
    layers: list[LayerRow]
    groups: list[Group]
    group_macs: dict[str, int]  # MACs of the layers whose weights a group slices (producers and consumers)
    shrinkable_macs: float = 0.0  # over the layers with a weight, MACs-weighted: the share of their two
    shrinkable_params: float = 0.0  # channel axes (input, output) a prunable group shrinks; by params

    def blocked(self, top: int = 5) -> list[tuple[str, float]]:
        """The groups that cannot be pruned, as (reason, share of the model's MACs they hold), most first."""
        rows = [(g.reason or "", self.group_macs.get(g.id, 0) / max(self.macs, 1)) for g in self.groups
                if not g.prunable and self.group_macs.get(g.id, 0)]
        return sorted(rows, key=lambda r: -r[1])[:top]

    def to_dict(self) -> dict:
        """The `inspect --json` contract."""
        return {
            "model": self.model,
            "macs": self.macs,
            "params": self.params,
            "prunable_groups": sum(g.prunable for g in self.groups),
            "shrinkable_macs": self.shrinkable_macs,
            "shrinkable_params": self.shrinkable_params,
            "groups": [
                {"id": g.id, "channels": g.channels, "prunable": g.prunable, "reason": g.reason,
                 "macs": self.group_macs.get(g.id, 0),
                 "members": [{"tensor": m.tensor, "axis": m.axis, "role": m.role} for m in g.members]}
                for g in self.groups
            ],
            "layers": [asdict(row) for row in self.layers],
        }


def inspect_model(model: Model, groups: list[Group] | None = None, attention: str = "dims") -> Report:
    """Collect the per-layer table and the groups of a loaded model."""
    groups = find_groups(model, attention) if groups is None else groups
    owner: dict[tuple[str, int], Group] = {}
    for g in groups:
        for m in g.members:
            owner.setdefault((m.tensor, m.axis), g)
    rows = []
    costs = {c.node: c for c in layer_costs(model)}
    for layer in _layers(model, costs):
        cost, group = costs[layer.node], owner.get((layer.tensor, layer.axis))
        rows.append(LayerRow(layer.node, layer.op, layer.channels, cost.macs, cost.params, group.id if group else None,
                             bool(group and group.prunable), group.reason if group else None))
    macs, params = totals(list(costs.values()))
    report = Report(str(model.path or "model"), macs, params, rows, groups, group_macs(model, groups))
    shares = _shrinkable(model, groups)
    weighted = [c for c in costs.values() if c.node in shares]
    report.shrinkable_macs = sum(shares[c.node] * c.macs for c in weighted) / max(sum(c.macs for c in weighted), 1)
    report.shrinkable_params = sum(shares[c.node] * c.params for c in weighted) / max(sum(c.params for c in weighted), 1)
    return report


@dataclass
class LayerAxis:
    """A layer (a node with MACs or params) and its output channel axis (`channels` None: none known)."""

    node: str
    op: str
    tensor: str
    axis: int | None
    channels: int | None


@dataclass
class LayerChannels:
    """A layer's output channels before pruning and after (`prune --plot` draws them)."""

    node: str
    op: str
    before: int
    after: int


def _layers(model: Model, costs: dict) -> list[LayerAxis]:
    """The layers of `costs` in graph order, each with its output channel axis when its rule names one."""
    layers = []
    for node in model.graph.nodes:
        name = node.name or node.outputs[0].name
        if name not in costs:
            continue
        out = node.outputs[0]
        shape, rule = model.shapes.get(out.name), entry_for(node)
        axis = rule.out_axis % len(shape) if rule is not None and rule.out_axis is not None and shape else None
        layers.append(LayerAxis(name, node.op, out.name, axis, None if axis is None else shape[axis]))
    return layers


def layer_axes(model: Model) -> list[LayerAxis]:
    """The layers with an output channel axis, in graph order: read them before pruning, count them after
    with `channels_after` (the model itself need not be kept)."""
    return [a for a in _layers(model, {c.node: c for c in layer_costs(model)}) if a.channels is not None]


def channels_after(layers: list[LayerAxis], groups: list[Group], plan: Plan) -> list[LayerChannels]:
    """Each layer's output channels before and after `plan` (a `Plan` made from `groups`): a channel is
    gone from a layer's output where a removed group channel sits on its axis."""
    gone: dict[tuple[str, int], int] = {}
    for g in groups:
        part = plan.groups.get(g.id)
        if part is None or not len(part.removed):
            continue
        removed = np.asarray(part.removed)
        for m in g.members:
            gone[(m.tensor, m.axis)] = gone.get((m.tensor, m.axis), 0) + int(np.isin(m.channel, removed).sum())
    return [LayerChannels(a.node, a.op, a.channels, a.channels - gone.get((a.tensor, a.axis), 0)) for a in layers]


def _shrinkable(model: Model, groups: list[Group]) -> dict[str, float]:
    """Per layer with a weight: half for its output channels and half for its input channels, when a
    prunable group shrinks that axis of the weight (1: both, 0.5: one, 0: neither). A depthwise conv's
    weight has no input-channel axis (it is [C, 1, k, k]): its input channels are its output channels, in
    the same group as the weight's rows, so that group shrinks both sides. Layers without a weight
    (attention's products of two activations) are not in it: they shrink with the layers around."""
    prunable = [g for g in groups if g.prunable]
    roles = {(m.tensor, m.role) for g in prunable for m in g.members}
    producing = {}  # weight -> the names of the tensors in the prunable group its output channels are in
    for g in prunable:
        for m in g.members:
            if m.role == OUT:
                producing.setdefault(m.tensor, set()).update(x.tensor for x in g.members)
    shares = {}
    for node in model.graph.nodes:
        rule = entry_for(node)
        if rule is None or rule.seeds is None or rule.weight_input >= len(node.inputs):
            continue
        weight = node.inputs[rule.weight_input]
        if isinstance(weight, gs.Constant):
            w = weight.name
            inputs = (w, IN) in roles or node.inputs[0].name in producing.get(w, ())  # depthwise
            shares[node.name or node.outputs[0].name] = 0.5 * ((w, OUT) in roles) + 0.5 * inputs
    return shares


def group_macs(model: Model, groups: list[Group]) -> dict[str, int]:
    """Per group, the MACs of the layers whose weights it slices and of the products of two activations it
    contracts (attention): what pruning it can save at most."""
    macs = {c.node: c.macs for c in layer_costs(model)}
    owner: dict[str, str] = {}
    for node in model.graph.nodes:
        for t in node.inputs:
            owner.setdefault(t.name, node.name or node.outputs[0].name)
    result = {}
    for g in groups:
        layers = {owner[m.tensor] for m in g.members if (m.is_weight or m.role == CONTRACT) and m.tensor in owner}
        result[g.id] = sum(macs.get(name, 0) for name in layers)
    return result


def human(n: float) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def format_report(report: Report, width: int | None = None) -> str:
    """The human-readable `inspect` output: a layer table, a group table, totals (`width`: the terminal's;
    None when the output is not one)."""
    layers = []
    for row in report.layers:
        status = ""
        if row.group is not None:
            status = ("prunable" if row.prunable else f"fixed: {row.reason}")
            if row.group != row.node:
                status += f" (group {row.group})"
        layers.append([row.node, row.op, "" if row.channels is None else str(row.channels), human(row.macs),
                       human(row.params), status])
    groups = [[g.id, str(g.channels), f"{report.group_macs.get(g.id, 0) / max(report.macs, 1):.1%}",
               "prunable" if g.prunable else g.reason or ""] for g in report.groups]
    lines = [render([Column("layer", left=True, id=True), Column("op", left=True), Column("ch"), Column("MACs"),
                     Column("params"), Column("output channels", left=True, wrap=True)], layers, width), ""]
    lines.append(render([Column("group", left=True, id=True), Column("channels"), Column("MACs %"),
                         Column("status", left=True, wrap=True)], groups, width))
    lines.append("(MACs %: the layers a group slices; a layer between two groups counts for both, so the column "
                 "sums past 100%)")
    prunable = sum(g.prunable for g in report.groups)
    lines.append("")
    lines.append(f"total: {human(report.macs)} MACs, {human(report.params)} params, "
                 f"{prunable} of {len(report.groups)} channel groups prunable")
    lines.append(f"can shrink: {report.shrinkable_macs:.0%} of the weighted layers' MACs, "
                 f"{report.shrinkable_params:.0%} of their params (a layer counts half for its output channels, "
                 "half for its input channels)")
    for reason, share in report.blocked():
        lines.append(f"  blocked, {'<0.1%' if share < 0.001 else f'{share:.1%}'} of MACs: {reason}")
    return "\n".join(lines)
