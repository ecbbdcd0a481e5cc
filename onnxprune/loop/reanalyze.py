"""Re-analysis for `[prune] reanalyze`: each round's starting model measured as the round will prune it."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from onnxprune.analysis.table import SensitivityTable
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.model import Model
from onnxprune.loop.config import RunConfig
from onnxprune.pruning.importance import DATA_CRITERIA
from onnxprune.pruning.prune import PruneOptions

Analyze = Callable[[Model, Path], SensitivityTable]


def default_analyze(config: RunConfig) -> Analyze:
    """Re-analysis with `onnxprune.analysis.analyze`, cached per round in the work dir (so it resumes too)."""
    if importlib.util.find_spec("onnxprune.analysis.analyze") is None:
        raise OnnxPruneError("prune.reanalyze: sensitivity analysis (onnxprune.analysis.analyze) is not available")
    from onnxprune.analysis.analyze import AnalyzeOptions, analyze

    settings, prune_settings = config.analyze, config.prune
    # measured as the rounds prune: with reconstruction when they reconstruct (the analysis data calibrates
    # it), at the channels their criterion picks (a data criterion needs analysis data; else l1)
    rounds = PruneOptions(criterion=prune_settings.criterion, data=prune_settings.data,
                          reconstruct=prune_settings.reconstruct)  # the rounds' choices, as `iterate` makes them
    criterion = rounds.chosen_criterion
    if criterion in DATA_CRITERIA and settings.data is None:
        criterion = "l1"
    reconstruct = rounds.reconstructs and settings.data is not None
    options = AnalyzeOptions(data=settings.data, eval=settings.eval, criterion=criterion, workers=settings.workers,
                             round_to=prune_settings.round_to, attention=prune_settings.attention,
                             reconstruct=reconstruct)
    if settings.ratios:
        options.ratios = list(settings.ratios)

    def run_analysis(model: Model, cache: Path) -> SensitivityTable:
        return analyze(model, replace(options, cache_dir=cache)).table

    return run_analysis
