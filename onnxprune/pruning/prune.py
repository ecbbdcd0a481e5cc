"""`prune`: groups -> importance -> plan -> surgery -> verification, as one library call.

Example:
    model = onnxprune.load("resnet50.onnx")
    result = onnxprune.prune(model, PruneOptions(ratio=0.5))
    onnxprune.save(result.model, "resnet50_slim.onnx")
"""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.analysis.table import SensitivityTable, sensitivity_ratios
from onnxprune.data import model_specs, random_feeds
from onnxprune.errors import NotExact, OnnxPruneError, OptionError, first_line
from onnxprune.graph.model import Model, to_proto, with_weights
from onnxprune.graph.runtime import max_relative_difference, run_graph
from onnxprune.progress import Progress
from onnxprune.pruning.channels import Group, find_groups
from onnxprune.pruning.importance import DATA_CRITERIA, get_criterion
from onnxprune.pruning.masks import zero_channels
from onnxprune.pruning.plan import Plan, Planner, candidate_groups, spec_ratios, uniform_ratios
from onnxprune.pruning.surgery import slim_graph, sparse, zeroed_in_place
from onnxprune.recover.allocation import reconstruction_ratios
from onnxprune.recover.calibration import calibration_batches, calibration_inputs
from onnxprune.recover.reconstruct import Reconstruction, reconstruct
from onnxprune.recover.scores import data_criterion
from onnxprune.recover.targets import KeptTargets
from onnxprune.rules import fused_rounding

TOLERANCE = 1e-4  # the invariant: max |sparse - slim| <= 1e-4 * max |sparse|


@dataclass
class PruneOptions:
    """Everything `prune` needs besides the model; shared by the CLI and library callers."""

    ratio: float | None = None  # fraction of MACs to remove
    spec: dict[str, float] | None = None  # group id -> fraction of its channels to remove
    sensitivity: SensitivityTable | None = None  # an `analyze` table: per-group ratios from metric loss
    criterion: str | None = None  # None: "greedy" with data and reconstruction, "act" with data only, else "l1"
    round_to: int | None = None  # kept channels a multiple of this; None: automatic (plan.alignment)
    exclude: list[str] = field(default_factory=list)
    mode: str = "slim"  # or "sparse"
    attention: str = "dims"  # MatMul attention loses head_dim positions ("dims") or whole heads ("heads")
    cumulative: bool = False  # channels already all zero count as removed (a sparse model pruned again)
    verify: bool = True
    providers: list[str] | None = None
    # calibration data: an .npz path or {input name: array}, samples on axis 0; unlabeled is enough
    data: str | os.PathLike | Mapping[str, np.ndarray] | None = None
    reconstruct: bool | None = None  # re-solve the layers reading removed channels; None: on with data
    activation_budget: int = 1 << 27  # bytes of activations kept in memory (more goes to a temporary folder)
    reconstruct_scope: str = "consumers"  # or "downstream": every layer whose input pruning changes
    # without a sensitivity table: "uniform", or "reconstruction" (by the greedy pass's error per MAC, the
    # default with data, reconstruction and the greedy criterion; uniform otherwise)
    allocation: str | None = None
    # means and normalizations over pruned channels (LayerNorm, RMSNorm, GRN): "exact" keeps the original
    # count, so slim == sparse; "approximate" normalizes over the kept channels (Torch-Pruning's form, a
    # fused LayerNorm: faster), and the slim model then differs from the sparse one (PruneResult.approximation)
    norms: str = "exact"

    def __post_init__(self) -> None:
        if isinstance(self.sensitivity, Mapping):  # the table as JSON (`SensitivityTable.to_dict`): check it
            self.sensitivity = SensitivityTable.from_dict(self.sensitivity)

    @property
    def allocates_by_reconstruction(self) -> bool:
        """Per-group ratios from the greedy pass's error curves (`recover.allocation`): asked for, or the
        default where that pass runs and reconstruction follows and no sensitivity table is given (with it
        every task of benchmarks/recovery.py keeps >= 98% of its metric at 30% of MACs removed; with uniform
        ratios the detector kept 97%)."""
        if self.allocation is not None:
            return self.allocation == "reconstruction"
        return self.sensitivity is None and self.reconstructs and self.chosen_criterion == "greedy"

    @property
    def chosen_criterion(self) -> str:
        """The criterion asked for, or the default: with data and reconstruction the reconstruction-aware
        greedy choice, with data alone activation-weighted (each kept the most of the metric in
        benchmarks/recovery.py in its setting), L1 magnitude without data."""
        if self.criterion is not None:
            return self.criterion
        if self.data is None:
            return "l1"
        return "greedy" if self.reconstructs else "act"

    @property
    def reconstructs(self) -> bool:
        return self.data is not None and self.reconstruct is not False

    def check(self) -> None:
        """Refuse bad options (an `OptionError` naming them by field: the CLI says its flags instead)."""
        if (self.ratio is None) == (self.spec is None):
            raise OptionError("give exactly one of {ratio} and {spec}")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise OptionError(f"{{ratio}} {self.ratio} is not in (0, 1)")
        if self.mode not in ("slim", "sparse"):
            raise OptionError(f"{{mode}} {self.mode!r}: choose slim or sparse")
        check_method(self.criterion, self.round_to, self.attention, self.data is not None, self.reconstruct)
        if self.norms not in ("exact", "approximate"):
            raise OptionError(f"{{norms}} {self.norms!r}: choose exact or approximate")
        if self.allocation not in (None, "uniform", "reconstruction"):
            raise OptionError(f"{{allocation}} {self.allocation!r}: choose uniform or reconstruction")
        if self.allocation == "reconstruction" and self.data is None:
            raise OptionError("{allocation} reconstruction needs calibration data ({data})")
        if self.allocation == "reconstruction" and self.chosen_criterion != "greedy":
            raise OptionError("{allocation} reconstruction reads the error curves of {criterion} greedy "
                              f"(the default with {{data}}), not {self.chosen_criterion}")
        if self.allocation is not None and self.sensitivity is not None:
            raise OptionError("give either {sensitivity} or {allocation}, not both")


def check_method(criterion: str | None, round_to: int | None, attention: str, has_data: bool,
                 reconstruct: bool | None) -> None:
    """The checks of how channels are chosen, shared by `PruneOptions` and the run config's [prune]."""
    if attention not in ("dims", "heads"):
        raise OptionError(f"{{attention}} {attention!r}: choose dims or heads")
    if round_to is not None and round_to < 1:
        raise OptionError(f"{{round_to}} {round_to} must be >= 1")
    if reconstruct and not has_data:
        raise OptionError("{reconstruct} needs calibration data ({data})")
    if criterion is not None:
        get_criterion(criterion, data=has_data)


@dataclass
class PruneResult:
    plan: Plan
    model: onnx.ModelProto  # sparse or slim, as asked
    difference: float | None = None  # measured sparse-vs-slim difference when verified
    reconstruction: Reconstruction | None = None  # what reconstruction did, when it ran
    # norms="approximate": the slim model's measured difference from the sparse one (not within the
    # invariant, by choice); `difference` is then the exact slim model's, which checks everything else
    approximation: float | None = None


def make_plan(model: Model, options: PruneOptions, groups: list[Group] | None = None,
              batches: list[dict[str, np.ndarray]] | None = None,
              progress: Callable[[Progress], None] | None = None, targets: KeptTargets | None = None) -> Plan:
    """The channels to remove, without touching the model (`progress` hears of a data criterion's pass;
    a greedy pass keeps reconstruction's targets in `targets` when given)."""
    options.check()
    groups = find_groups(model, options.attention) if groups is None else groups
    candidates = candidate_groups(model, groups, options.exclude)
    choice = None  # the greedy pass: its removal order, and the error curves allocation reads
    if options.chosen_criterion in DATA_CRITERIA:
        batches = calibration_batches(model, options.data) if batches is None else batches
        criterion, choice = data_criterion(options.chosen_criterion, model, candidates, batches, options.providers,
                                           options.activation_budget, progress, targets)
    else:
        criterion = get_criterion(options.chosen_criterion)
    scores = {g.id: np.asarray(criterion(model, g), dtype=np.float64) for g in candidates}
    floor: dict[str, float] = {}
    if options.cumulative:  # zero channels score below every live one, and are never given back
        for group in candidates:
            zero = zero_channels(model, group)
            scores[group.id][zero] = -1.0
            floor[group.id] = len(zero) / group.channels
    planner = Planner(model, groups, scores, options.round_to, options.chosen_criterion)
    if options.spec is not None:
        return planner.plan(spec_ratios(options.spec, candidates, groups))
    if not candidates:
        raise OnnxPruneError("no prunable channel groups in this model (see `onnxprune inspect`)")
    if options.sensitivity is not None:
        if (why := options.sensitivity.mismatch(options.chosen_criterion, options.reconstructs)) is not None:
            warnings.warn(why, stacklevel=2)
        decided = options.sensitivity.decided_macs
        if decided is not None and options.ratio > decided:
            warnings.warn(f"the sensitivity table was measured adaptively and decides plans up to {decided:.0%} of "
                          f"MACs; at {options.ratio:.0%} groups stop at their last measured ratio (analyze with "
                          "--cover or --exact for more)", stacklevel=2)
        ratios_at = sensitivity_ratios(options.sensitivity, candidates)
    elif options.allocates_by_reconstruction and choice is not None:
        ratios_at = reconstruction_ratios(choice, candidates, planner)
    else:
        ratios_at = uniform_ratios(candidates)
    return planner.fit(lambda knob: {g: max(r, floor.get(g, 0.0)) for g, r in ratios_at(knob).items()}, options.ratio)


def prune(model: Model, options: PruneOptions, progress: Callable[[Progress], None] | None = None,
          groups: list[Group] | None = None) -> PruneResult:
    """Plan and apply; in slim mode also check that slim computes what sparse computes.

    With calibration data (`options.data`) and reconstruction on, the layers that read removed channels
    are re-solved first (`recover.reconstruct`; `model` is left as the reconstructed sparse model), and
    the sparse or slim model is made from it. `groups` saves finding them again when the caller has them.
    """
    options.check()
    groups = find_groups(model, options.attention) if groups is None else groups
    # the calibration data (as big as the model, or bigger) is not needed for slimming and checking; the
    # greedy pass keeps its unpruned targets, so reconstruction runs one model only
    with calibration_inputs(model, options.data) as batches, KeptTargets() as kept:
        plan = make_plan(model, options, groups, batches, progress,
                         kept if options.reconstructs and options.reconstruct_scope == "consumers" else None)
        fitted = None if not options.reconstructs else \
            reconstruct(model, groups, plan, batches, options.providers, options.activation_budget // 2,
                        progress=progress, scope=options.reconstruct_scope, targets=kept)
    if options.mode == "sparse":
        if fitted is None:
            return PruneResult(plan, sparse(model, groups, plan))
        weights = model.weights()  # already the reconstructed sparse model
        return PruneResult(plan, with_weights(model, {n: weights[n].values for n in fitted.changed}),
                           reconstruction=fitted)
    try:
        graph = slim_graph(model, groups, plan, options.norms)
    except Exception:
        run_input(model, random_feeds(model_specs(model), batch=1), options.providers)  # whose fault?
        raise
    difference = approximation = None
    if options.verify:
        with zeroed_in_place(model, groups, plan):
            if options.norms == "approximate":  # the exact slim model checks the rest; this one is measured
                difference = check_same_function(model, slim_graph(model, groups, plan), providers=options.providers)
                approximation = measure_difference(model, graph, options.providers)
            else:
                difference = check_same_function(model, graph, providers=options.providers)
        gc.collect()  # IR graphs are reference cycles: free the check's copies before exporting
    return PruneResult(plan, to_proto(graph, model.skeleton, consume=True), difference, fitted, approximation)


def run_input(model: Model, feeds: dict[str, np.ndarray], providers: list[str] | None = None,
              optimize: bool = True) -> list[np.ndarray]:
    """The model's outputs; a model onnxruntime cannot run is bad input (exit 2), not a pruning bug.

    Zeroed values cannot break a model, so this also tells whose fault a failure after pruning is.
    """
    try:
        return run_graph(model.graph, model.skeleton, feeds, providers, optimize)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types
        raise OnnxPruneError(f"the model does not run in onnxruntime ({first_line(exc)})") from None


def measure_difference(model: Model, candidate: gs.Graph, providers: list[str] | None = None) -> float:
    """Max relative difference of the candidate graph's outputs from the model's on a random batch."""
    feeds = random_feeds(model_specs(model), batch=2)
    return max_relative_difference(run_input(model, feeds, providers), run_graph(candidate, model.skeleton, feeds,
                                                                                providers))


def check_same_function(model: Model, candidate: gs.Graph, providers: list[str] | None = None) -> float:
    """Run the candidate graph and the model on the same random batch; refuse a candidate that computes
    otherwise. To check against the sparse model, run it inside `surgery.zeroed_in_place`.

    Both run with their weights fed as inputs, so the check costs no copy of the model. The bar is the
    invariant's 1e-4 relative difference. Deep models whose outputs are tiny on random input (a
    detector's sigmoid map) reach that from float rounding alone; then the bar is ten times the rounding
    noise of the reference itself, measured as the difference between onnxruntime with and without
    graph optimizations. A wrong pruning differs by orders of magnitude more. QDQ models run as the format
    defines them (unoptimized: onnxruntime's fused int8 kernels round otherwise), where slim equals sparse.
    """
    feeds = random_feeds(model_specs(model), batch=2)
    optimize = not fused_rounding(model.graph)
    expected = run_input(model, feeds, providers, optimize)
    try:
        difference = max_relative_difference(expected, run_graph(candidate, model.skeleton, feeds, providers,
                                                                  optimize))
        bar = TOLERANCE
        if difference > bar:
            rerun = run_graph(model.graph, model.skeleton, feeds, providers, optimize=False)
            bar = max(TOLERANCE, 10 * max_relative_difference(expected, rerun))
    except Exception as exc:
        raise NotExact(f"the pruned model does not run: {first_line(exc)}; use --mode sparse, or --exclude "
                       "the layers involved") from exc
    if not np.isfinite(difference) or difference > bar:
        raise NotExact(f"the pruned model differs from the sparse one (max relative difference "
                       f"{difference:.2e}); use --mode sparse, or --exclude the layers involved")
    return difference
