"""The iterative prune -> fine-tune loop behind `onnxprune iterate`.

One pass cannot remove many channels without an accuracy cliff; pruning a little, fine-tuning, and
repeating with the ratio raised can (the Vitis AI Optimizer's iterative workflow). Each round prunes the
previous round's fine-tuned model to the next MACs ratio of the schedule, hands the sparse model and its
masks to the adapter for a few fine-tuning trials (learning rates, decay policies), and keeps the best
trial if it recovers the metric to within `tolerance`. If no trial does, the round is retried with half
the step, at most `max_backoffs` times per schedule entry; then the run stops with the best model so far
and says so. At the end the best model is transformed to the dense model (and encrypted if configured).

How MACs are counted: every model in the loop is *sparse* — the original graph with channels zeroed,
shapes untouched — because that is what a framework loads back into the module it came from. Counted
as-is it would cost what the original costs. So a round plans on the sparse model with the channels
earlier rounds removed counted as removed: they score below every live channel and each group removes at
least as many channels as it has zeroed (`PruneOptions(cumulative=True)`). A round's ratio is thus the cumulative fraction of
the starting model's MACs, the MACs reported are those of the dense model `transform` will produce, and a
round only ever adds to what earlier rounds removed.

The work dir (see `onnxprune.loop.workdir`; a step is done when its JSON record exists):

    config.json  baseline.onnx  baseline.json
    round-01/  plan.json  sparse.onnx  masks.npz  pruned.json  trial-1.onnx  trial-1.json ...
    dense.onnx  [dense.onnx.enc]  final.json  report.json

Example:
    config = RunConfig(schedule=Schedule(target=0.6, step=0.2), finetune=FineTune(trials=[{"lr": 1e-2}]))
    adapter = TorchAdapter(net, torch.zeros(1, 3, 32, 32), train=my_train, evaluate=my_top1)
    result = run(config, adapter, "work", baseline=adapter.export())
    print(format_table(result))
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from onnxprune.adapters import Adapter, check_returned
from onnxprune.analysis.table import SensitivityTable
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.graph.load import from_proto, parse_input_shapes, read_proto
from onnxprune.graph.model import Model
from onnxprune.graph.save import save
from onnxprune.loop.config import RunConfig
from onnxprune.loop.reanalyze import Analyze, default_analyze
from onnxprune.loop.result import Round, RunResult, brief, num
from onnxprune.loop.workdir import Workdir
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.cost import layer_costs, totals
from onnxprune.pruning.masks import Masks, masks_from_plan
from onnxprune.pruning.prune import PruneOptions, prune
from onnxprune.pruning.transform import transform

# analyze(model, cache folder) -> sensitivity table: re-analysis per round
Progress = Callable[[str], None]
PROGRESS_EPS = 1e-6  # a round must remove at least this fraction of MACs more than the last


def run(config: RunConfig, adapter: Adapter, workdir: str | os.PathLike,
        baseline: onnx.ModelProto | str | os.PathLike | None = None, *, analyze: Analyze | None = None,
        progress: Progress | None = None) -> RunResult:
    """Run (or resume) the loop in `workdir`; `baseline` defaults to `config.model`.

    With `prune.reanalyze`, each round measures a sensitivity table on its starting model with `analyze`
    (default: `onnxprune.analysis.analyze` with the config's `[analyze]` settings) and allocates by it.
    """
    config.check()
    if config.output and config.model and Path(config.output).resolve() == Path(config.model).resolve():
        raise OnnxPruneError(f"output {config.output}: would overwrite the starting model; choose another path")
    if config.prune.reanalyze and analyze is None:
        analyze = default_analyze(config)
    if config.encrypt is not None and importlib.util.find_spec("onnxprune.secure") is None:
        raise OnnxPruneError("encrypt: encryption (onnxprune.secure) is not available in this installation")
    wd = Workdir(workdir)
    with wd.locked():
        return _Loop(config, adapter, wd, analyze, progress or _stderr).run(baseline)


# --- the loop ------------------------------------------------------------------------------------------


@dataclass
class _State:
    """The current baseline: the last accepted model."""

    proto: onnx.ModelProto
    metric: float
    macs_removed: float


class _Loop:
    def __init__(self, config: RunConfig, adapter: Adapter, wd: Workdir, analyze: Analyze | None,
                 say: Progress) -> None:
        self.config = config
        self.adapter = adapter
        self.wd = wd
        self.analyze = analyze
        self.say = say
        self.shapes = parse_input_shapes(config.input_shapes)
        self.options = PruneOptions(ratio=0.5, mode="sparse", criterion=config.prune.criterion,
                                    round_to=config.prune.round_to, exclude=list(config.prune.exclude),
                                    attention=config.prune.attention,
                                    data=config.prune.data, reconstruct=config.prune.reconstruct,
                                    cumulative=True)
        self.table: SensitivityTable | None = None

    def run(self, baseline: onnx.ModelProto | str | os.PathLike | None) -> RunResult:
        given = self._given(baseline)
        if self.wd.begin(self.config.run_key()):
            self.say(f"resuming the run in {self.wd.root}")
        proto = self._baseline(given)
        base = self.wd.read_json("baseline.json")
        if base is None:
            model = from_proto(proto, self.shapes)
            macs, params = totals(layer_costs(model))
            start = time.perf_counter()
            metric = _metric(self.adapter.evaluate(proto), "baseline")
            base = {"metric": metric, "macs": macs, "params": params, "seconds": time.perf_counter() - start}
            self.wd.write_json("baseline.json", base)
        self.say(f"baseline: metric {num(base['metric'])}, {base['macs']} MACs")
        state = _State(proto, base["metric"], 0.0)
        rounds: list[Round] = []
        stopped = None
        for goal in self.config.schedule.steps():
            if state.macs_removed >= goal - PROGRESS_EPS:
                continue
            state, stopped = self._reach(goal, state, base, rounds)
            if stopped:
                self.say(f"stopping: {stopped}")
                break
        target = self.config.schedule.target
        if not stopped and state.macs_removed < target - 0.01:
            notes = "; ".join(rounds[-1].notes) if rounds else ""
            stopped = f"reached {state.macs_removed:.1%} of MACs, not the target {target:.1%}" + (
                f": {notes}" if notes else "")
        return self._finish(state, base, rounds, stopped)

    def _given(self, given: onnx.ModelProto | str | os.PathLike | None) -> onnx.ModelProto | None:
        """The starting model given to `run` or named in the config, read; None when resuming without one."""
        if given is None and self.config.model is not None:
            given = self.config.model
        if isinstance(given, (str, os.PathLike)):
            given = read_proto(given)
        if given is None and not self.wd.has("baseline.onnx"):
            raise OnnxPruneError("no baseline model: set `model` in the run config or pass one to run()")
        return given

    def _baseline(self, given: onnx.ModelProto | None) -> onnx.ModelProto:
        """The starting model: the work dir's copy when resuming (checked against the one given)."""
        if self.wd.has("baseline.onnx"):
            stored = self.wd.read_model("baseline.onnx")
            if given is not None and _digest(given) != _digest(stored):
                raise OptionError(f"{{workdir}} {self.wd.root}: was started from another baseline model; "
                                     "use a new work dir")
            return stored
        self.wd.write_model("baseline.onnx", given)
        return given

    def _reach(self, goal: float, state: _State, base: dict, rounds: list[Round]) -> tuple[_State, str | None]:
        """Rounds until `goal` is accepted, backing off to smaller steps; the new state, or why to stop."""
        ask, backoff = goal, 0
        while True:
            number = len(rounds) + 1
            pruned = self._prune(number, state, ask)
            if pruned["macs_removed"] <= state.macs_removed + PROGRESS_EPS:
                notes = "; ".join(pruned["notes"])
                return state, (f"no more channels can be removed (at most {state.macs_removed:.1%} of MACs)"
                               + (f": {notes}" if notes else ""))
            row, best = self._fine_tune(number, state, pruned, base, backoff)
            rounds.append(row)
            if row.accepted:
                state = _State(best(), row.metric_after, row.macs_removed)
                if ask == goal:
                    return state, None
                ask = goal  # a smaller step landed: try the schedule's ratio again from there
                continue
            if backoff >= self.config.schedule.max_backoffs:
                return state, (f"round {number}: no trial recovered the metric to within "
                               f"{self.config.schedule.tolerance:g} at {ask:.1%} of MACs ({backoff} smaller "
                               f"step{'' if backoff == 1 else 's'} tried); kept round {self._last_accepted(rounds)}")
            backoff += 1
            ask = state.macs_removed + (ask - state.macs_removed) / 2
            self.say(f"round {number}: rejected; retrying with a smaller step, to {ask:.1%} of MACs")

    @staticmethod
    def _last_accepted(rounds: list[Round]) -> str:
        accepted = [r.round for r in rounds if r.accepted]
        return str(accepted[-1]) if accepted else "0 (the baseline)"

    def _prune(self, number: int, state: _State, ask: float) -> dict[str, Any]:
        """Step 1 of a round: the sparse model, its masks and plan, and its metric before fine-tuning."""
        folder = f"round-{number:02d}"
        done = self.wd.read_json(f"{folder}/pruned.json")
        if done is not None:
            if not math.isclose(done["ratio_asked"], ask, rel_tol=0, abs_tol=1e-9):
                raise OnnxPruneError(f"{self.wd.path(folder)}: was pruned to {done['ratio_asked']} but this run asks "
                                     f"{ask}; the work dir does not belong to this run")
            self.say(f"round {number}: pruned to {done['macs_removed']:.1%} of MACs (checkpoint)")
            return done
        start = time.perf_counter()
        model = from_proto(state.proto, self.shapes)
        groups = find_groups(model, self.options.attention)
        options = replace(self.options, ratio=ask, sensitivity=self._sensitivity(model, folder))
        result = prune(model, options, groups=groups)  # sparse; with data, the readers of removed channels re-solved
        plan, sparse_proto = result.plan, result.model
        masks = masks_from_plan(model, groups, plan)
        del model
        metric = _metric(self.adapter.evaluate(sparse_proto), f"round {number} pruned model")
        self.wd.write_model(f"{folder}/sparse.onnx", sparse_proto)
        self.wd.write_bytes(f"{folder}/masks.npz", masks.to_npz())
        self.wd.write_bytes(f"{folder}/plan.json", plan.to_json().encode("utf-8"))
        done = {"ratio_asked": ask, "macs": plan.macs_after, "params": plan.params_after,
                "macs_removed": plan.macs_ratio, "metric": metric, "seconds": time.perf_counter() - start,
                "notes": plan.notes}
        self.wd.write_json(f"{folder}/pruned.json", done)
        self.say(f"round {number}: pruned to {plan.macs_ratio:.1%} of MACs (asked {ask:.1%}), metric "
                 f"{num(metric)} before fine-tuning")
        return done

    def _sensitivity(self, model: Model, folder: str) -> SensitivityTable | None:
        if self.config.prune.reanalyze:
            self.say(f"{folder}: analyzing sensitivity")
            return self.analyze(model, self.wd.path(f"{folder}/analysis"))
        if self.config.prune.sensitivity and self.table is None:
            self.table = SensitivityTable.load(self.config.prune.sensitivity)
        return self.table

    def _fine_tune(self, number: int, state: _State, pruned: dict[str, Any], base: dict,
                   backoff: int) -> tuple[Round, Callable[[], onnx.ModelProto]]:
        """Step 2 of a round: every trial (each one a checkpoint), then the verdict."""
        folder = f"round-{number:02d}"
        trials = self.config.finetune.trial_settings()
        inputs: tuple[onnx.ModelProto, Masks] | None = None
        records = []
        for index, settings in enumerate(trials, 1):
            name = f"{folder}/trial-{index}"
            record = self.wd.read_json(f"{name}.json")
            if record is None:
                if inputs is None:
                    masks = Masks.from_npz(self.wd.read_bytes(f"{folder}/masks.npz"), f"{folder}/masks.npz")
                    inputs = (self.wd.read_model(f"{folder}/sparse.onnx"), masks)
                record = self._trial(name, inputs, settings, f"round {number} trial {index}")
                self.say(f"round {number} trial {index}/{len(trials)} {brief(settings)}: metric "
                         f"{num(record['metric'])} ({record['seconds']:.1f} s)")
            else:
                self.say(f"round {number} trial {index}/{len(trials)}: metric {num(record['metric'])} (checkpoint)")
            records.append(record)
        best = max(range(len(records)), key=lambda i: (records[i]["metric"], -i))
        reference = base["metric"] if self.config.schedule.compare_to == "baseline" else state.metric
        tolerance = self.config.schedule.tolerance
        metric = records[best]["metric"]
        accepted = metric >= reference - tolerance - 1e-12
        seconds = pruned["seconds"] + sum(r["seconds"] for r in records)
        row = Round(number, pruned["ratio_asked"], pruned["macs"], pruned["params"], pruned["macs_removed"],
                    pruned["metric"], metric, best + 1, records[best]["settings"], accepted, backoff, seconds,
                    list(pruned["notes"]))
        self.say(f"round {number}: best trial {best + 1}, metric {num(metric)} "
                 f"{'>=' if accepted else '<'} {num(reference)} - {tolerance:g}: "
                 f"{'accepted' if accepted else 'rejected'}")
        return row, lambda: self.wd.read_model(f"{folder}/trial-{best + 1}.onnx")

    def _trial(self, name: str, inputs: tuple[onnx.ModelProto, Masks], settings: dict[str, Any],
               where: str) -> dict[str, Any]:
        sparse_proto, masks = inputs
        start = time.perf_counter()
        tuned = self.adapter.fine_tune(sparse_proto, masks, dict(settings))
        if not isinstance(tuned, onnx.ModelProto):
            raise OnnxPruneError(f"{where}: the adapter returned {type(tuned).__name__}, not an ONNX ModelProto")
        tuned = check_returned(sparse_proto, tuned, masks, f"{where}: fine-tuned model")
        metric = _metric(self.adapter.evaluate(tuned), where)
        self.wd.write_model(f"{name}.onnx", tuned)
        record = {"settings": settings, "metric": metric, "seconds": time.perf_counter() - start}
        self.wd.write_json(f"{name}.json", record)
        return record

    def _finish(self, state: _State, base: dict, rounds: list[Round], stopped: str | None) -> RunResult:
        """The end: the dense model (and its encrypted copy), the report."""
        final = self.wd.read_json("final.json")
        dense_proto = None
        if final is None:
            start = time.perf_counter()
            result = transform(from_proto(state.proto, self.shapes))
            dense_proto = result.model
            self.wd.write_model("dense.onnx", dense_proto)
            final = {"macs": result.plan.macs_after, "params": result.plan.params_after,
                     "seconds": time.perf_counter() - start}
            self.wd.write_json("final.json", final)
        dense = self.wd.path("dense.onnx")
        if self.config.output:
            if dense_proto is None:
                dense_proto = self.wd.read_model("dense.onnx")
            save(dense_proto, self.config.output)
            dense = Path(self.config.output)
        encrypted = self._encrypt(dense) if self.config.encrypt is not None else None
        result = RunResult(base["metric"], base["macs"], base["params"], rounds, state.metric, final["macs"],
                           final["params"], 1 - final["macs"] / base["macs"] if base["macs"] else 0.0,
                           self.config.schedule.target, stopped, str(dense), encrypted)
        self.wd.write_json("report.json", result.to_dict())
        self.say(f"done: {result.macs_removed:.1%} of MACs removed, metric {num(result.metric)} "
                 f"(baseline {num(result.baseline_metric)}) -> {dense}")
        return result

    def _encrypt(self, dense: Path) -> str:
        from onnxprune.secure import encrypt_file

        target = dense.with_name(dense.name + ".enc")
        encrypt_file(dense, target, self.config.encrypt.source())  # checked with the config
        return str(target)


def _metric(value: Any, where: str) -> float:
    try:
        metric = float(value)
    except (TypeError, ValueError):
        raise OnnxPruneError(f"{where}: the adapter's evaluate returned {value!r}, not a number") from None
    if not math.isfinite(metric):
        raise OnnxPruneError(f"{where}: the adapter's evaluate returned {metric}")
    return metric


def _digest(proto: onnx.ModelProto) -> str:
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def _stderr(message: str) -> None:
    print(f"onnxprune: {message}", file=sys.stderr, flush=True)
