"""`analyze`: the sensitivity table — per channel group and ratio, the metric with those channels zeroed.

For each entry the channels are chosen exactly as `prune` chooses them (`Planner.plan` with the same
criterion), and the metric is that of the sparse model `surgery` would write: what you analyze is what
you get. Entries run through an executor (this process, a process pool, Ray), each finished entry is
written to the resumable cache, and the part of the network before a group is computed once per group.

How an entry reaches the model (masks, or its weights put in) is `entries`.

Example:
    model = onnxprune.load("model.onnx")
    result = analyze(model, AnalyzeOptions(data="val.npz", cache_dir=".cache"))
    result.table.save("sens.json")
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from onnxprune.analysis.adaptive import (
    DEFAULT_COVER,
    DEFAULT_PLANS,
    FLOOR_SHARE,
    Outcome,
    bounds,
    decided,
    removed_at,
)
from onnxprune.analysis.cache import AnalysisCache, cache_key, removal_digest
from onnxprune.analysis.entries import entries
from onnxprune.analysis.evaluator import DEFAULT_PREFIX_BUDGET, Evaluator, Payload
from onnxprune.analysis.executors import require_ray
from onnxprune.analysis.metrics import (
    PER_SAMPLE,
    Agreement,
    Fidelity,
    Metric,
    Top1,
    UserEval,
    eval_source_digest,
    load_eval,
)
from onnxprune.analysis.run import Clock, EntryRun, adaptive_run, macs_shares, measured_rows, skipped_note
from onnxprune.analysis.sequential import MIN_SAMPLES, RELATIVE_PRECISION, Z
from onnxprune.analysis.table import DEFAULT_RATIOS, SensitivityTable, check_analysis, ratio_key
from onnxprune.data import (
    DEFAULT_BATCH,
    RANDOM_SAMPLES,
    Dataset,
    check_data,
    count_samples,
    load_data,
    model_specs,
    random_data,
)
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.graph.model import Model, with_weights
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group, find_groups
from onnxprune.pruning.importance import DATA_CRITERIA, get_criterion
from onnxprune.pruning.plan import Plan, Planner, candidate_groups, named_groups
from onnxprune.recover.calibration import Batches, calibration_batches
from onnxprune.recover.resolve import resolved_readers
from onnxprune.recover.scores import data_criterion
from onnxprune.rules import fused_rounding

SEQUENTIAL_BATCH = 8
FLAT = 1e-9  # a metric that moves less than this is "flat"
MIN_VAL_FRACTION = 0.5  # the Vitis guideline: analyze on at least half of the validation set


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/onnxprune/analyze (~/.cache/onnxprune/analyze)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxprune" / "analyze"


@dataclass
class AnalyzeOptions:
    """Everything `analyze` needs besides the model; shared by the CLI and library callers."""

    data: str | None = None  # .npz named after the model's inputs (+ labels); None: random inputs
    eval: str | None = None  # package.module:function, see `metrics`
    ratios: list[float] = field(default_factory=lambda: list(DEFAULT_RATIOS))
    criterion: str | None = None  # None: "greedy" with reconstruction, else "l1" (as `prune`)
    reconstruct: bool = False  # measure each entry with the layers reading the group re-solved (needs data)
    metric: str | None = None  # "fidelity" or "agreement" (label-free); None: top-1 with labels, else fidelity
    workers: int = 1
    ray: str | None = None  # a Ray address; runs the entries as Ray tasks
    cache_dir: str | Path | None = None  # None: no cache (the CLI defaults to `default_cache_dir()`)
    force: bool = False  # ignore what the cache holds
    val: str | None = None  # the full validation set, only counted for the guideline check
    providers: list[str] | None = None
    batch_size: int | None = None  # None: DEFAULT_BATCH, adaptive SEQUENTIAL_BATCH (early stops check each batch)
    groups: list[str] | None = None  # analyze only these group ids (default: every prunable group)
    round_to: int | None = None  # kept channel counts as `prune --round-to` makes them (None: its default)
    attention: str = "dims"  # how attention MatMuls are grouped, as in `prune --attention`
    prefix_budget: int = DEFAULT_PREFIX_BUDGET
    exact: bool = False  # every cell on every sample (today's full table) instead of `adaptive`
    cover: float = DEFAULT_COVER  # adaptive: the plans up to this share of MACs removed are the full table's
    plans: list[float] | None = None  # adaptive: shares of MACs whose plans are made the full table's (None: 0.5)
    samples: int | None = None  # analyze on this many samples (random inputs: default 64; data: its first N)
    budget: float | None = None  # minutes; what is not measured by then is left out, and said so

    @property
    def batch(self) -> int:
        """The batch size used: early stopping looks at each batch, so adaptive runs take smaller ones."""
        return self.batch_size or (DEFAULT_BATCH if self.exact else SEQUENTIAL_BATCH)

    @property
    def chosen_criterion(self) -> str:
        """The criterion asked for, or the one `prune` uses by default in the same setting."""
        return self.criterion or ("greedy" if self.reconstruct else "l1")

    def check(self) -> None:
        """Refuse bad options (an `OptionError` naming them by field: the CLI says its flags instead)."""
        check_analysis(self.ratios, self.workers)
        if self.ray is not None and self.workers > 1:
            raise OptionError("give {workers} or {ray}, not both")
        if self.round_to is not None and self.round_to < 1:
            raise OptionError(f"{{round_to}} {self.round_to} must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise OnnxPruneError(f"batch size {self.batch_size} must be >= 1")
        if not 0 < self.cover < 1:
            raise OptionError(f"{{cover}} {self.cover} is not in (0, 1)")
        for share in self.plans or []:
            if not 0 < share <= self.cover:
                raise OptionError(f"{{plans}} {share} is not in (0, {{cover}} = {self.cover}]")
        if self.samples is not None and self.samples < 1:
            raise OptionError(f"{{samples}} {self.samples} must be >= 1")
        if self.budget is not None and not self.budget > 0:
            raise OptionError(f"{{budget}} {self.budget} must be > 0 minutes")
        if self.metric not in (None, "fidelity", "agreement"):
            raise OptionError(f"{{metric}} {self.metric!r}: choose fidelity or agreement (or give labels, or {{eval}})")
        if self.metric is not None and self.eval is not None:
            raise OptionError("give {metric} or {eval}, not both")
        if self.reconstruct and self.data is None:
            raise OptionError("{reconstruct} needs calibration data ({data})")
        get_criterion(self.chosen_criterion, data=self.data is not None)
        if self.eval is not None:
            load_eval(self.eval)
        if self.ray is not None:
            require_ray()


@dataclass
class AnalysisResult:
    table: SensitivityTable
    evaluated: int  # entries computed by this run
    cached: int  # entries taken from the cache
    warnings: list[str]
    cache_path: Path | None = None
    cost: float = 0.0  # what ran, in evaluations of the unpruned model on the whole data


def analyze(model: Model, options: AnalyzeOptions, progress: Callable[[Progress], None] | None = None,
            warn: Callable[[str], None] | None = None) -> AnalysisResult:
    """Build the sensitivity table of every prunable group (or `options.groups`) at every ratio (adaptive:
    as far as allocation can use it, see `adaptive`).

    `progress` is called through the setup (with its stage) and as entries finish; `warn` with each
    warning as it arises (they are also in the result).
    """
    options.check()
    warnings: list[str] = []
    clock = Clock(time.monotonic(), progress)

    def note(text: str) -> None:
        warnings.append(text)
        if warn is not None:
            warn(text)

    clock.stage("finding channel groups")
    groups = find_groups(model, options.attention)
    targets = _targets(model, groups, options.groups)
    data = _data(model, options, note)
    metric = _metric(data, options)
    for text in _check_data_size(_samples(data, metric), options.val):
        note(text)
    proto = with_weights(model).SerializeToString()
    settings = _settings(model, data, metric, options)
    key = cache_key(hashlib.sha256(proto).hexdigest(), data.digest(), json.dumps(settings, sort_keys=True))
    cache, problem = AnalysisCache.open(options.cache_dir, key, settings, options.force)
    if problem:
        note(problem)

    clock.stage(f"choosing channels ({options.chosen_criterion})")
    batches = calibration_batches(model, options.data) \
        if options.reconstruct or options.chosen_criterion in DATA_CRITERIA else None
    planner, plans = _plans(model, groups, targets, options, batches, progress)
    chosen = {(gid, k): removal_digest(plan.groups[gid].removed if gid in plan.groups else [])
              for (gid, k), plan in plans.items()}
    todo = [(g, k) for g in targets for k in _keys(options) if not cache.has(g.id, k, chosen[(g.id, k)])]
    payload = Payload(key, proto, metric, options.providers, 0, options.prefix_budget,
                      not fused_rounding(model.graph), macs_shares(model), cache.baseline)
    evaluator = _baseline(payload, cache, bool(todo), clock)
    spent = evaluator.meter.spent if evaluator is not None else 0.0
    resolved = None
    if options.reconstruct and todo:
        resolved = resolved_readers(model, groups, _removals(todo, plans), batches, options.providers,
                                    progress=progress)
    run = EntryRun(payload, evaluator, options.workers, options.ray, options.budget, cache, chosen, clock,
                   len(plans) - len(todo), len(plans), spent, lambda some: entries(model, groups, plans, some, resolved))
    outcome = None
    if options.exact:
        run.measure(todo, None)
    else:
        shares = sorted(set(options.plans if options.plans is not None else
                            [s for s in DEFAULT_PLANS if s <= options.cover]))
        outcome = adaptive_run(run, planner, targets, _keys(options), options.cover, shares)
    table = _table(planner, targets, _keys(options), cache, chosen, metric, data, options, outcome)
    for text in (_check_flat(table) if run.complete else []) + skipped_note(run, outcome):
        note(text)
    return AnalysisResult(table, run.evaluated, len(plans) - len(todo), warnings, cache.path, run.spent)


def _baseline(payload: Payload, cache: AnalysisCache, todo: bool, clock: Clock) -> Evaluator | None:
    """Evaluate the unpruned model if the cache lacks it, or if entries to compute compare with its outputs
    or per-sample values (every built-in metric); the evaluator that did, if any."""
    evaluator = None
    if cache.baseline is None or (todo and isinstance(payload.metric, PER_SAMPLE)):
        clock.stage("evaluating the unpruned model")
        evaluator = Evaluator(payload)
        baseline = evaluator.baseline()  # also records what fidelity, agreement and early stops compare with
        if cache.baseline is None:
            cache.set_baseline(baseline)
    payload.baseline = cache.baseline
    return evaluator


def _keys(options: AnalyzeOptions) -> list[str]:
    return [ratio_key(r) for r in options.ratios]


def _plans(model: Model, groups: list[Group], targets: list[Group], options: AnalyzeOptions,
           batches: Batches | None, progress: Callable[[Progress], None] | None) -> tuple[Planner, dict]:
    """The channels each entry removes: those `prune --spec {group: ratio}` would remove, by the same
    criterion (a data criterion from `batches`)."""
    criterion = get_criterion(options.chosen_criterion, data=True)
    if criterion is None:
        criterion, _ = data_criterion(options.chosen_criterion, model, targets, batches, options.providers,
                                      progress=progress)
    scores = {g.id: criterion(model, g) for g in targets}
    planner = Planner(model, groups, scores, options.round_to)
    return planner, {(g.id, k): planner.plan({g.id: float(k)}) for g in targets for k in _keys(options)}


def _removals(todo: list[tuple[Group, str]], plans: dict[tuple[str, str], Plan]) -> dict[str, dict[str, np.ndarray]]:
    """Group id -> entry key -> the group channels the entry removes (entries that remove some)."""
    removals: dict[str, dict[str, np.ndarray]] = {}
    for group, key in todo:
        part = plans[(group.id, key)].groups.get(group.id)
        if part is not None and len(part.removed):
            removals.setdefault(group.id, {})[key] = np.asarray(part.removed)
    return removals


def _targets(model: Model, groups: list[Group], wanted: list[str] | None) -> list[Group]:
    prunable = candidate_groups(model, groups, [])
    if wanted is None and not prunable:
        raise OnnxPruneError("no prunable channel groups in this model (see `onnxprune inspect`)")
    return prunable if wanted is None else named_groups(wanted, prunable, groups)


def _data(model: Model, options: AnalyzeOptions, note: Callable[[str], None]) -> Dataset:
    """The analysis data: the file (its first `samples`; adaptive: in a seeded random order, so that the
    first batches an entry stops after are a fair sample even of a file sorted by class), nothing for an
    eval that brings its own, or random."""
    if options.data is not None:
        data = load_data(options.data, model_specs(model), options.batch, user_eval=options.eval is not None)
        n = min(options.samples or data.samples, data.samples)
        if n == data.samples and (options.exact or options.eval is not None):
            return data
        order = np.arange(n) if options.exact or options.eval is not None else np.random.default_rng(0).permutation(n)
        arrays = {name: a[:n][order] if np.ndim(a) and len(a) == data.samples else a
                  for name, a in data.arrays().items()}
        where = options.data if n == data.samples else f"{options.data} (first {n})"
        return check_data(arrays, model_specs(model), where, options.batch, user_eval=options.eval is not None)
    if options.eval is not None:  # the function brings its own data; keep the dataset only for the key
        return replace(random_data(model_specs(model), 1, 1), source="from --eval")
    count = options.samples or RANDOM_SAMPLES
    note(f"no --data: analyzing on {count} random inputs with the label-free fidelity metric; "
         "real data gives a table you can trust")
    return random_data(model_specs(model), count, options.batch)


def _metric(data: Dataset, options: AnalyzeOptions) -> Metric:
    if options.eval is not None:
        return UserEval(options.eval, data if options.data is not None else None)
    if options.metric == "agreement":
        return Agreement(data)
    return Top1(data) if data.labels is not None and options.metric is None else Fidelity(data)


def _settings(model: Model, data: Dataset, metric: Metric, options: AnalyzeOptions) -> dict:
    """Every setting that changes a number of the table (ratios do not: entries are keyed by ratio)."""
    return {
        "metric": metric.name,
        "eval_source": eval_source_digest(options.eval) if options.eval else None,
        "criterion": options.chosen_criterion,
        "reconstruct": options.reconstruct,
        "round_to": options.round_to,
        "attention": options.attention,
        "input_shapes": {k: list(v) for k, v in sorted(model.input_shapes.items())},
        "providers": list(options.providers or ["CPUExecutionProvider"]),
        "batch_size": data.batch_size,
        "data": data.source if options.data is None else Path(data.source).name,
        **({} if options.exact else {"estimate": ["sequential", RELATIVE_PRECISION, Z, MIN_SAMPLES, FLOOR_SHARE]}),
    }


# --- the table and its checks ----------------------------------------------------------------------------


def _table(planner: Planner, targets: list[Group], keys: list[str], cache: AnalysisCache, chosen: dict,
           metric: Metric, data: Dataset, options: AnalyzeOptions, outcome: Outcome | None) -> SensitivityTable:
    """The table of what the cache holds; adaptive: with the cells left out and how far its plans are decided."""
    rows = {gid: row for gid, row in measured_rows(cache, targets, keys, chosen).items() if row}
    shares = {}
    for g in targets:
        macs, _ = planner.cost({g.id: list(range(g.channels))})
        shares[g.id] = 1 - macs / planner.macs_before if planner.macs_before else 0.0
    baseline = float(cache.baseline)
    table = SensitivityTable(metric.name, baseline, rows, {g.id: g.channels for g in targets if g.id in rows},
                             {g: v for g, v in shares.items() if g in rows}, options.chosen_criterion,
                             {"source": data.source, "samples": _samples(data, metric)}, options.reconstruct)
    if outcome is not None:
        table.worse_than = bounds(rows, keys, baseline, outcome.cap)
        limit = decided({g.id: rows.get(g.id, {}) for g in targets}, keys, baseline)
        table.decided_macs = 1.0 if not math.isfinite(limit) else removed_at(table, targets, planner, limit * (1 - 1e-9))
    return table


def _samples(data: Dataset, metric: Metric) -> int | None:
    """How many samples the metric saw (unknown when a user eval brings its own data)."""
    return None if isinstance(metric, UserEval) and metric.data is None else data.samples


def _check_data_size(samples: int | None, val: str | None) -> list[str]:
    """The Vitis guideline: analyze on at least half of the validation set."""
    if val is None or samples is None:
        return []
    full = count_samples(val)
    if samples >= MIN_VAL_FRACTION * full:
        return []
    return [(f"the analysis data has {samples} samples, less than half of the {full} in {val}; "
            "use at least half of the validation set")]


def _check_flat(table: SensitivityTable) -> list[str]:
    """A metric that does not move for most groups cannot rank them: the data is too small."""
    flat = [gid for gid, row in table.groups.items()
            if all(v is not None and abs(v - table.baseline) <= FLAT for v in row.values())]
    if not flat or len(flat) * 2 < len(table.groups):
        return []
    hint = " or drop 'labels' for the label-free fidelity metric" if table.metric == "top1" else ""
    return [(f"the metric is flat for {len(flat)} of {len(table.groups)} groups (every ratio scores the "
            f"baseline): the data is too small to tell the groups apart; use more data{hint}")]
