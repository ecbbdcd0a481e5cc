"""What each analysis entry changes in the model: masks on the outputs that read the group (one session
serves every ratio), or the entry's weights put in — zeroed, and with reconstruction the re-solved readers.

How an entry reaches the model (see `graph.split`): when every node that reads the group's zeroed weights
outputs exact zeros for the removed channels in the sparse model (its registry entry is a zero maker:
Conv, Gemm, MatMul, BN with zeroed weights; or a zero keeper such as an Add of a zeroed bias to a masked
output; see `mask_points`), multiplying those outputs by a 0/1 mask is the same function as zeroing the
weights. Otherwise the group's weights themselves are put in (weights mode, one session per entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.analysis.evaluator import Entry, Job
from onnxprune.graph.model import Model, stored_values
from onnxprune.graph.split import MaskPoint
from onnxprune.pruning.channels import Group
from onnxprune.pruning.plan import Plan
from onnxprune.pruning.surgery import removed_slices, sparse_values
from onnxprune.recover.resolve import Resolved, entry_values
from onnxprune.rules import ZEROED_ROLES, entry_for


def mask_points(model: Model, group: Group) -> list[MaskPoint] | None:
    """Where masks reproduce the group's sparse model exactly, or None when only its weights can.

    A node that reads a zeroed weight gets a mask on its output when its sparse output is exactly zero
    there: always for a `zero_maker` operator, and for a `zero_keeper` (f(0, 0) = 0) when its other inputs
    are masked.
    """
    weights = model.weights()
    if any(isinstance(v, gs.Graph) for node in model.graph.nodes for v in node.attrs.values()):
        return None  # a subgraph (If, Loop) may read a tensor by name from outside: no renaming there
    zeroed = {m.tensor for m in group.members if m.role in ZEROED_ROLES and m.tensor in weights}
    points: list[MaskPoint] = []
    masked_by: dict[str, object] = {}  # masked tensor -> the node making it
    for node in model.graph.nodes:
        used = [t for t in node.inputs if t.name in zeroed]
        if not used:
            continue
        masked = {p.tensor for p in points}
        others = [t for t in node.inputs if t.name not in weights]
        rule = entry_for(node)
        if rule is None or not node.outputs:
            return None
        if not (rule.zero_maker or (rule.zero_keeper and all(t.name in masked for t in others))):
            return None
        out = node.outputs[0]
        members = [m for m in group.members if m.tensor == out.name and not m.is_weight]
        shape = model.shapes.get(out.name)
        if not members or shape is None:
            return None
        dtype = np.dtype(used[0].values.dtype).name
        points += [MaskPoint(out.name, m.axis, m.size, len(shape), dtype) for m in members]
        masked_by[out.name] = node
    return [p for p in points if not _masked_later(p, masked_by)] or None


def _masked_later(point: MaskPoint, masked_by: dict) -> bool:
    """True when every reader of the point is a channel-wise node whose output is masked anyway: then
    this mask changes nothing (and leaving it out keeps Conv+BN fusable and the cut later)."""
    readers = [n for n in masked_by[point.tensor].outputs[0].outputs]
    masked = {id(n) for n in masked_by.values()}
    return bool(readers) and all(id(n) in masked and _channelwise(n) for n in readers)


def _channelwise(node: gs.Node) -> bool:
    rule = entry_for(node)
    return rule is not None and rule.channelwise


@dataclass
class Work:
    """The entries left to compute: jobs, entries that zero nothing (the baseline's metric), and entries
    that zero the same channels as another (computed once)."""

    jobs: list[Job] = field(default_factory=list)
    unchanged: list[tuple[str, str]] = field(default_factory=list)
    same: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def entries(model: Model, groups: list[Group], plans: dict[tuple[str, str], Plan],
             todo: list[tuple[Group, str]], resolved: Resolved | None = None) -> Work:
    """The jobs for `todo`; with `resolved` (reconstruction) every entry puts its weights in: the zeroed
    ones and the re-solved readers'."""
    work, jobs = Work(), {}
    first: dict[tuple[str, tuple[int, ...]], str] = {}
    for group, key in todo:
        plan = plans[(group.id, key)]
        removed = tuple(plan.groups[group.id].removed) if group.id in plan.groups else ()
        if not removed:
            work.unchanged.append((group.id, key))
            continue
        earlier = first.setdefault((group.id, removed), key)
        if earlier != key:
            work.same.setdefault((group.id, earlier), []).append(key)
            continue
        job = jobs.get(group.id)
        if job is None:
            points = mask_points(model, group) if resolved is None else None
            job = jobs[group.id] = Job(group.id, [], points or [])
        if resolved is not None:
            weights = stored_values(model, entry_values(model, groups, plan, resolved.get((group.id, key), {})))
            job.weights = sorted(set(job.weights) | set(weights))
            job.entries.append(Entry(key, weights=weights))
        elif job.points:
            slices = {(m.tensor, m.axis): index for m, index in removed_slices(groups, plan)}
            zeroed = [slices.get((p.tensor, p.axis), np.zeros(0, np.int64)) for p in job.points]
            job.entries.append(Entry(key, zeroed=zeroed))
        else:
            weights = stored_values(model, sparse_values(model, groups, plan))
            job.weights = sorted(set(job.weights) | set(weights))
            job.entries.append(Entry(key, weights=weights))
    work.jobs = list(jobs.values())
    return work
