"""The sensitivity table: per group and ratio, the metric with that fraction of the group's channels zeroed.

`analyze -o SENS.json` writes it (the contract: `{"metric", "baseline", "groups": {id: {"0.1": m, ...}}}`
plus `group_info` and `data` for people), a CSV beside it and, with `--plot`, metric-vs-ratio curves.
`SensitivityTable` is the one type of it from end to end: `analyze` returns one, `save` and `load` write
and read the file, `recover.allocation` builds one from the greedy pass's error curves, `prune --sens` (and each round
of `iterate`) allocates by one. `prune --sens` reads it back: `sensitivity_ratios` turns it into per-group channel ratios driven by one
knob — a threshold on the metric loss — that the planner bisects until the MACs land on the target.

A metric of `null` means the pruned model produced no finite metric (NaN outputs): the worst possible.
An adaptive table (`analysis.adaptive`) leaves out the cells past the ratio where a group's loss passed
everything allocation uses; `worse_than` names them with the metric they are known to be worse than, and
allocation never gives such a group more than its last measured ratio. `decided_macs` says up to what
share of MACs removed its plans are the ones the full table makes.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from onnxprune.atomic import write_text
from onnxprune.data import read_json
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.plots import new_figure, save_png
from onnxprune.pruning.channels import Group
from onnxprune.tables import Column, display_id, render

TABLE_VERSION = 1
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TOLERATED_LOSS = 0.01  # "within 1% loss": relative to the baseline metric
TIE_SLOPE = 1e-6  # tiny loss per unit ratio: equally tolerant groups are pruned alike, never by luck


def ratio_key(ratio: float) -> str:
    """The JSON key of a ratio: its shortest decimal form ("0.1", "0.25")."""
    return repr(round(float(ratio), 6))


def parse_ratios(text: str) -> list[float]:
    """`--ratios 0.1,0.2,...` -> sorted unique ratios, each in (0, 1)."""
    if not text.strip():
        raise OptionError("{ratios} is empty: give fractions such as 0.1,0.3,0.5")
    ratios = []
    for item in text.split(","):
        try:
            value = round(float(item), 6)
        except ValueError:
            raise OptionError(f"{{ratios}}: {item.strip()!r} is not a number") from None
        if not 0 < value < 1:
            raise OptionError(f"{{ratios}}: {value} is not in (0, 1)")
        ratios.append(value)
    return sorted(set(ratios))


def check_analysis(ratios: list[float] | None, workers: int) -> None:
    """The checks of what analysis measures and how widely, shared by `analysis.AnalyzeOptions` and the run
    config's [analyze]."""
    if ratios is not None and not ratios:
        raise OptionError("{ratios}: give at least one ratio")
    for ratio in ratios or []:
        if not 0 < ratio < 1:
            raise OptionError(f"{{ratios}}: {ratio} is not in (0, 1)")
    if workers < 1:
        raise OptionError(f"{{workers}} {workers} must be >= 1")


@dataclass
class SensitivityTable:
    """{group: {ratio key: metric}} plus the baseline; higher metric is better."""

    metric: str
    baseline: float
    groups: dict[str, dict[str, float | None]]
    channels: dict[str, int] = field(default_factory=dict)
    macs_share: dict[str, float] = field(default_factory=dict)  # MACs that scale with the group's channels
    criterion: str = "l1"
    data: dict = field(default_factory=dict)  # where the numbers come from: source, samples
    reconstruct: bool = False  # each entry measured with the layers reading the group re-solved
    worse_than: dict[str, dict[str, float | None]] = field(default_factory=dict)  # cells not measured: below this
    decided_macs: float | None = None  # adaptive: plans up to this share of MACs removed are the full table's

    def mismatch(self, criterion: str, reconstruct: bool) -> str | None:
        """Why this table measured other models than a prune with `criterion` and `reconstruct` makes
        (None when it measured the same): allocation by it then rests on other numbers."""
        if reconstruct != self.reconstruct:
            return ("the sensitivity table was measured " + ("with" if self.reconstruct else "without")
                    + " reconstruction and this prune " + ("reconstructs" if reconstruct else "does not")
                    + ("" if reconstruct else " (give calibration data)")
                    + (": `analyze --reconstruct` measures what it will do" if reconstruct else ""))
        if criterion != self.criterion:
            return (f"the sensitivity table was measured at the channels {self.criterion} picks; this prune "
                    f"picks by {criterion} (analyze with the same criterion)")
        return None

    def curve(self, gid: str) -> list[tuple[float, float]]:
        """(ratio, metric loss) sorted by ratio; a non-finite metric is an infinite loss, and so is a cell
        not measured (`worse_than`): allocation never goes past the last measured ratio of a row."""
        points = []
        for key, value in self.groups[gid].items():
            loss = math.inf if value is None else self.baseline - value
            points.append((float(key), loss))
        points += [(float(key), math.inf) for key in self.worse_than.get(gid, {})]
        return sorted(points)

    def tolerated(self, gid: str, loss: float = TOLERATED_LOSS) -> float:
        """The largest ratio such that it and every smaller ratio lose at most `loss` of the baseline."""
        best = 0.0
        for ratio, lost in self.curve(gid):
            if lost > loss * abs(self.baseline) + 1e-12:
                break
            best = ratio
        return best

    def sensitivity(self, gid: str) -> float:
        """Mean loss over the ratios: how much this group hurts when pruned (the plot marks the largest);
        a cell not measured counts with the loss it is known to exceed."""
        bounds = [math.inf if v is None else self.baseline - v for v in self.worse_than.get(gid, {}).values()]
        measured = [lost for ratio, lost in self.curve(gid) if ratio_key(ratio) in self.groups[gid]]
        losses = [min(lost, 1e30) for lost in measured + bounds]
        return sum(losses) / len(losses) if losses else 0.0

    @property
    def adaptive(self) -> bool:
        """Whether cells were left out (`analysis.adaptive`)."""
        return self.decided_macs is not None or any(self.worse_than.values())

    def to_dict(self) -> dict:
        return {
            "version": TABLE_VERSION,
            "metric": self.metric,
            "baseline": self.baseline,
            "criterion": self.criterion,
            "reconstruct": self.reconstruct,
            "data": self.data,
            "groups": self.groups,
            **({"worse_than": self.worse_than, "decided_macs": self.decided_macs} if self.adaptive else {}),
            "group_info": {gid: {"channels": self.channels.get(gid), "macs_share": self.macs_share.get(gid),
                                 "max_ratio_within_1pct": self.tolerated(gid)} for gid in self.groups},
        }

    @staticmethod
    def load(path: str | Path) -> SensitivityTable:
        """Read and check `analyze -o` output (the JSON file)."""
        return SensitivityTable.from_dict(read_json(path, "sensitivity table"), str(path))

    def save(self, path: str | Path) -> list[Path]:
        """Write the JSON table and its CSV twin, each atomically; returns both paths (`table_paths`)."""
        paths = table_paths(path)
        write_text(paths[0], json.dumps(self.to_dict(), indent=1) + "\n")
        write_text(paths[1], table_csv(self))
        return paths

    @staticmethod
    def from_dict(data: object, where: str = "sensitivity table") -> SensitivityTable:
        """Check a table read from JSON (or handed in as a dict); any defect is an `OnnxPruneError` naming
        what is wrong. A `SensitivityTable` is always a checked one: this is its only way in from outside."""
        if not isinstance(data, dict):
            raise OnnxPruneError(f"{where}: not a sensitivity table (expected a JSON object)")
        metric, baseline, groups = data.get("metric"), data.get("baseline"), data.get("groups")
        if not isinstance(metric, str) or not is_number(baseline) or not isinstance(groups, dict):
            raise OnnxPruneError(f"{where}: not a sensitivity table (needs 'metric', 'baseline' and 'groups')")
        checked: dict[str, dict[str, float | None]] = {}
        for gid, row in groups.items():
            if not isinstance(row, dict) or not row:
                raise OnnxPruneError(f"{where}: group {gid!r} has no {{ratio: metric}} entries")
            checked[gid] = {}
            for key, value in row.items():
                try:
                    ratio = float(key)
                except ValueError:
                    raise OnnxPruneError(f"{where}: group {gid!r}: ratio {key!r} is not a number") from None
                if not 0 < ratio < 1:
                    raise OnnxPruneError(f"{where}: group {gid!r}: ratio {key} is not in (0, 1)")
                if value is not None and not is_number(value):
                    raise OnnxPruneError(f"{where}: group {gid!r}: metric {value!r} at {key} is not a number")
                checked[gid][ratio_key(ratio)] = None if value is None else float(value)
        info = data.get("group_info") if isinstance(data.get("group_info"), dict) else {}
        channels = {g: v["channels"] for g, v in info.items()
                    if isinstance(v, dict) and isinstance(v.get("channels"), int)}
        shares = {g: float(v["macs_share"]) for g, v in info.items()
                  if isinstance(v, dict) and is_number(v.get("macs_share"))}
        decided = data.get("decided_macs")
        return SensitivityTable(metric, float(baseline), checked, channels, shares,
                                str(data.get("criterion", "l1")), data.get("data") or {}, data.get("reconstruct") is True,
                                _bounds(data.get("worse_than"), checked, where), float(decided) if is_number(decided) else None)


def _bounds(data: object, groups: dict[str, dict[str, float | None]], where: str) -> dict[str, dict[str, float | None]]:
    """The `worse_than` cells of a table file: for groups of the table, at ratios it did not measure."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OnnxPruneError(f"{where}: 'worse_than' is not {{group: {{ratio: metric}}}}")
    bounds: dict[str, dict[str, float | None]] = {}
    for gid, row in data.items():
        if gid not in groups or not isinstance(row, dict):
            raise OnnxPruneError(f"{where}: 'worse_than' names group {gid!r}, which has no row")
        for key, value in row.items():
            try:
                ratio = ratio_key(float(key))
            except ValueError:
                raise OnnxPruneError(f"{where}: 'worse_than' of {gid!r}: ratio {key!r} is not a number") from None
            if ratio in groups[gid] or not 0 < float(ratio) < 1 or not (value is None or is_number(value)):
                raise OnnxPruneError(f"{where}: 'worse_than' of {gid!r} at {key}: not an unmeasured ratio with a metric")
            bounds.setdefault(gid, {})[ratio] = None if value is None else float(value)
    return bounds


def is_number(value: object) -> bool:
    """A finite int or float (not a bool): what a metric in a table or cache must be."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- files -----------------------------------------------------------------------------------------


def csv_path(json_path: str | Path) -> Path:
    """Where the CSV twin of a JSON table goes: same name, `.csv`."""
    return Path(json_path).with_suffix(".csv")


def table_paths(path: str | Path) -> list[Path]:
    """Where `SensitivityTable.save` writes: the JSON path and its CSV twin (checked against inputs before a run)."""
    twin = csv_path(path)
    if twin == Path(path):
        twin = Path(f"{path}.csv")
    return [Path(path), twin]


def table_csv(table: SensitivityTable) -> str:
    """One row per group: channels, MACs share, max ratio within 1% loss, then the metric at each ratio."""
    keys = _ratio_keys(table)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "channels", "macs_share", "max_ratio_within_1pct", "baseline", *keys])
    for gid, row in table.groups.items():
        bounds = table.worse_than.get(gid, {})
        writer.writerow([gid, table.channels.get(gid, ""), _fmt(table.macs_share.get(gid)), table.tolerated(gid),
                         table.baseline, *[_fmt(row.get(k)) if k not in bounds else "<" + _fmt(bounds[k])
                                           for k in keys]])
    return out.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(value)


def _ratio_keys(table: SensitivityTable) -> list[str]:
    rows = [*table.groups.values(), *table.worse_than.values()]
    return sorted({k for row in rows for k in row}, key=float)


def _cell(table: SensitivityTable, gid: str, key: str) -> str:
    """A cell of `format_table`: the metric, `nan`, `<0.41` where not measured, blank where not asked."""
    row, bounds = table.groups[gid], table.worse_than.get(gid, {})
    if key in bounds:
        return "<nan" if bounds[key] is None else f"<{bounds[key]:.3f}"
    if key not in row:
        return ""
    return "nan" if row[key] is None else f"{row[key]:.4f}"


def format_table(table: SensitivityTable, width: int | None = None) -> str:
    """The per-group summary printed at the end of `analyze` (`width`: the terminal's; None: not one)."""
    keys = _ratio_keys(table)
    columns = [Column("group", left=True, id=True), Column("ch"), Column("MACs"), Column("<=1%"),
               *(Column(k) for k in keys)]
    rows = []
    for gid in table.groups:
        share = table.macs_share.get(gid)
        rows.append([gid, str(table.channels.get(gid, "")), "" if share is None else f"{share:.1%}",
                     f"{table.tolerated(gid):.2f}", *(_cell(table, gid, k) for k in keys)])
    title = (f"metric: {table.metric}, baseline {table.baseline:.4f}; columns: the metric with that ratio of the "
             "group's channels zeroed")
    if table.adaptive:
        decided = "" if table.decided_macs is None else f"; its plans are the full table's up to {table.decided_macs:.0%} of MACs"
        title += f"\n<m: not measured, worse than m (adaptive analysis{decided})"
    return title + "\n" + render(columns, rows, width)


def plot_table(table: SensitivityTable, path: str | Path, highlight: int = 5) -> None:
    """Metric-vs-ratio curves per group (as Distiller draws them) as a PNG; the most sensitive in color."""
    fig, legend = sensitivity_figure(table, highlight)
    save_png(fig, path, [legend])  # the legend sits right of the plot, whatever the ids' length or the groups' count


def sensitivity_figure(table: SensitivityTable, highlight: int = 5):
    """The figure of `plot_table` and its legend (outside the axes, ids cut as `format_table` cuts them off a
    terminal: `tables.display_id`)."""
    ranked = sorted(table.groups, key=table.sensitivity, reverse=True)
    marked = ranked[:highlight]
    fig = new_figure(9, 5.5)
    ax = fig.subplots()
    for gid in ranked[highlight:] + marked:  # the marked ones on top, and in rank order in the legend
        row = table.groups[gid]
        keys = sorted(row, key=float)
        xs = [0.0] + [float(k) for k in keys]
        ys = [table.baseline] + [math.nan if row[k] is None else row[k] for k in keys]
        if gid in marked:
            ax.plot(xs, ys, marker="o", linewidth=2, label=f"#{marked.index(gid) + 1} {display_id(gid)}")
        else:
            ax.plot(xs, ys, color="0.75", linewidth=1)
    ax.axhline(table.baseline - TOLERATED_LOSS * abs(table.baseline), color="k", linestyle="--", linewidth=1,
               label="1% loss")
    ax.set_xlabel("fraction of the group's channels zeroed")
    ax.set_ylabel(table.metric)
    rest = f"; gray: the other {len(ranked) - len(marked)}" if len(ranked) > len(marked) else ""
    ax.set_title(f"Sensitivity of {len(ranked)} channel groups (colored: the {len(marked)} most sensitive{rest})")
    ax.grid(True, alpha=0.3)
    legend = ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig, legend


# --- allocation: per-group ratios from the table -----------------------------------------------------


def sensitivity_ratios(table: SensitivityTable, candidates: list[Group]) -> Callable[[float], dict[str, float]]:
    """Per-group channel ratios for a knob in [0, 1]: each group takes the largest ratio whose loss stays
    under a threshold (knob x the largest loss in the table).

    Losses are read off each group's curve made monotone (a ratio counts only if no smaller ratio lost
    more: small data makes curves noisy) and interpolated between the table's ratios, so the MACs move
    smoothly with the knob and `Planner.fit` can land them on a target. Groups the table does not name
    are left whole; a ratio is never larger than the largest the table measured.
    """
    curves = allocation_curves(table, candidates)
    top = max((loss for curve in curves.values() for _, loss in curve if math.isfinite(loss)), default=0.0)
    return lambda knob: loss_ratios(curves, knob * top)


def allocation_curves(table: SensitivityTable, candidates: list[Group]) -> dict[str, list[tuple[float, float]]]:
    """Per group the table names: (ratio, loss) as allocation reads it (`envelope`), checked against the model."""
    known = [g for g in candidates if g.id in table.groups]
    if candidates and not known:
        raise OnnxPruneError("the sensitivity table names none of this model's prunable groups "
                             "(was it made for another model?)")
    for g in known:
        channels = table.channels.get(g.id)
        if channels is not None and channels != g.channels:
            raise OnnxPruneError(f"sensitivity table: group {g.id!r} has {channels} channels there but "
                                 f"{g.channels} in this model (was it made for another model?)")
    return {g.id: envelope(table.curve(g.id)) for g in known}


def loss_ratios(curves: dict[str, list[tuple[float, float]]], threshold: float) -> dict[str, float]:
    """Per group, the largest ratio whose interpolated loss (on its `envelope`) is <= `threshold`."""
    return {gid: largest_ratio(curve, threshold) for gid, curve in curves.items()}


def envelope(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(0, 0) then the running maximum of the loss (never below 0), plus a tiny slope to break ties."""
    points, worst = [(0.0, 0.0)], 0.0
    for ratio, loss in curve:
        worst = max(worst, loss)
        points.append((ratio, worst + TIE_SLOPE * ratio))
    return points


def largest_ratio(curve: list[tuple[float, float]], threshold: float) -> float:
    """The largest ratio whose interpolated loss is <= threshold (the curve strictly increases)."""
    for (r0, l0), (r1, l1) in itertools.pairwise(curve):
        if l1 > threshold:
            if not math.isfinite(l1) or threshold <= l0:
                return r0
            return r0 + (threshold - l0) / (l1 - l0) * (r1 - r0)
    return curve[-1][0]
