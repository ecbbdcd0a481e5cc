"""`inspect`: per-layer MACs and params, channel groups, and why a group cannot be pruned.

Collecting (`inspect_model`) and formatting (`format_report`) are separate: the library returns data,
the CLI prints it, and `--json` is the contract other tools read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.pruning.channels import Group, find_groups
from onnxprune.pruning.cost import layer_costs, totals
from onnxprune.rules import CONTRACT, IN, OUT, entry_for


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
    for node in model.graph.nodes:
        name = node.name or node.outputs[0].name
        cost = costs.get(name)
        if cost is None:
            continue
        out = node.outputs[0]
        shape = model.shapes.get(out.name)
        channels = group = None
        rule = entry_for(node)
        if rule is not None and rule.out_axis is not None and shape:
            axis = rule.out_axis % len(shape)
            channels = shape[axis]
            group = owner.get((out.name, axis))
        rows.append(LayerRow(name, node.op, channels, cost.macs, cost.params, group.id if group else None,
                             bool(group and group.prunable), group.reason if group else None))
    macs, params = totals(list(costs.values()))
    report = Report(str(model.path or "model"), macs, params, rows, groups, group_macs(model, groups))
    shares = _shrinkable(model, groups)
    weighted = [c for c in costs.values() if c.node in shares]
    report.shrinkable_macs = sum(shares[c.node] * c.macs for c in weighted) / max(sum(c.macs for c in weighted), 1)
    report.shrinkable_params = sum(shares[c.node] * c.params for c in weighted) / max(sum(c.params for c in weighted), 1)
    return report


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


def format_report(report: Report, width: int = 48) -> str:
    """The human-readable `inspect` output: a layer table, a group table, totals."""
    lines = [f"{'layer':<{width}} {'op':<14} {'ch':>6} {'MACs':>9} {'params':>9}  output channels"]
    for row in report.layers:
        status = ""
        if row.group is not None:
            status = ("prunable" if row.prunable else f"fixed: {row.reason}")
            if row.group != row.node:
                status += f" (group {row.group})"
        ch = "" if row.channels is None else str(row.channels)
        lines.append(f"{_cut(row.node, width):<{width}} {row.op:<14} {ch:>6} {human(row.macs):>9} "
                     f"{human(row.params):>9}  {status}")
    lines.append("")
    lines.append(f"{'group':<{width}} {'channels':>8} {'MACs %':>7}  status")
    for g in report.groups:
        share = report.group_macs.get(g.id, 0) / max(report.macs, 1)
        lines.append(f"{_cut(g.id, width):<{width}} {g.channels:>8} {share:>7.1%}  "
                     f"{'prunable' if g.prunable else g.reason}")
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


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]
