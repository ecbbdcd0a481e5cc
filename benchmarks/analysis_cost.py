"""What sensitivity analysis costs, full table against adaptive, and whether `prune --sens` plans the same.

Two real-sized models, each analyzed on 64 real inputs with the label-free fidelity metric:

- resnet50: the ResNet-50 of tools/resnet50.py (random weights, 37 groups) at 56x56 (a sixteenth of the
  224x224 cost on this shared 2-core machine; the same graph and groups, and the count below is in units
  of its own evaluation), on crops of scikit-learn's two sample photos (benchmarks/recovery_cost.py's
  `resnet50_calib256.npz`, averaged 4x4);
- yolov8n: a real detector from a wheel, nudenet 3.4.2's YOLOv8n at 320x320 (59 groups, tasks/yolov8n.py),
  on crops of the same photos.

Cost is counted, not timed: in evaluations of the unpruned model on the same 64 inputs (each onnxruntime
run counts its nodes' share of the model's MACs times its share of the samples: `evaluator.Meter`), so it
does not depend on the machine or its load; wall time is printed beside it. The full table is
`analyze --exact` (every group x 9 ratios x 64 samples); adaptive is `analyze` (the default). Then
`prune --ratio R --sens` (criterion l1, no data) plans 30% and 50% of MACs from each table: the plans
are compared channel by channel, and where they differ both pruned (sparse) models are scored by
fidelity on 64 other crops; the goal is identical plans or a metric within 0.5% of the full table's plan.
Goals (the issue): adaptive ResNet-50 <= 40 evaluations; the detector's adaptive analysis under 15 min.

    python benchmarks/analysis_cost.py [--models resnet50,yolov8n] [--samples 64]

Full tables are cached in benchmarks/out/analysis_cost/ (with their cost and time beside them), so a run
again reuses them; `--fresh` starts over; `--reuse` reuses the last adaptive table too (only replans). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
WORK = OUT / "analysis_cost"
TARGETS = (0.3, 0.5)
GOAL_EVALUATIONS = 40.0
GOAL_MINUTES = 15.0
GOAL_METRIC = 0.005


def resnet50(samples: int, size: int = 56) -> tuple[Path, dict | None, dict, dict]:
    """The model, its input shapes if dynamic, and two sets of crops: analysis data and held-out inputs."""
    model = OUT / f"resnet50_{size}.onnx"
    if not model.exists():
        sys.path.insert(0, str(ROOT))
        from tools.resnet50 import export_resnet50

        export_resnet50(model, size)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from recovery_cost import build_model, calibration

    with np.load(calibration(build_model(), 256)) as data:
        crops = next(iter(data.values()))
    step = 224 // size
    smaller = crops.reshape(len(crops), 3, size, step, size, step).mean(axis=(3, 5)).astype(np.float32)
    return model, None, {"input": smaller[:samples]}, {"input": smaller[samples:2 * samples]}


def yolov8n(samples: int) -> tuple[Path, dict | None, dict, dict]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tasks import from_wheel
    from tasks.yolov8n import MEMBER, PACKAGE, SIZE, crops

    return (from_wheel(PACKAGE, MEMBER), {"images": (1, 3, SIZE, SIZE)}, {"images": crops(samples, seed=21)},
            {"images": crops(samples, seed=22)})


MODELS = {"resnet50": resnet50, "yolov8n": yolov8n}


def l1_planner(name: str, samples: int = 64) -> tuple:
    """`name`'s model loaded, its groups, the candidate groups, a planner by l1 (the channels `analyze` zeroes
    by default) and its analysis data: what the replay and the batched timing plan entries with."""
    import onnxprune
    from onnxprune.pruning.channels import find_groups
    from onnxprune.pruning.importance import get_criterion
    from onnxprune.pruning.plan import Planner, candidate_groups

    path, shapes, data, _ = MODELS[name](samples)
    model = onnxprune.load(path, shapes)
    groups = find_groups(model, "dims")
    targets = candidate_groups(model, groups, [])
    criterion = get_criterion("l1", data=True)
    planner = Planner(model, groups, {g.id: criterion(model, g) for g in targets}, None)
    return model, groups, targets, planner, data


def analyze_once(model: tuple[Path, dict | None], data: Path, exact: bool, cover: float | None = None) -> dict:
    """One analysis in this process: the table, its cost (evaluations) and wall time."""
    import onnxprune
    from onnxprune.analysis.analyze import AnalyzeOptions, analyze

    start, cpu = time.perf_counter(), time.process_time()
    options = AnalyzeOptions(data=str(data), exact=exact)
    if cover is not None:
        options.cover = cover
    result = analyze(onnxprune.load(*model), options)
    entries = sum(len(row) for row in result.table.groups.values())
    return {"table": result.table.to_dict(), "cost": result.cost, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu, "entries": entries, "evaluated": result.evaluated, "decided_macs": result.table.decided_macs}


def full_table(name: str, model: tuple[Path, dict | None], data: Path, fresh: bool) -> dict:
    """The exact table, reused from an earlier run of this benchmark (same model and data) unless `fresh`."""
    saved = WORK / f"{name}_full.json"
    if saved.exists() and not fresh:
        run = json.loads(saved.read_text())
        if run.get("data_digest") == _digest(data):
            return run
    run = analyze_once(model, data, True)
    run["data_digest"] = _digest(data)
    saved.write_text(json.dumps(run))
    return run


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def plans(model: tuple[Path, dict | None], tables: dict[str, dict], held_out: dict) -> dict[float, dict]:
    """Per target: whether the two tables' plans are identical, and each pruned model's fidelity."""
    import onnxprune
    from onnxprune.analysis.table import SensitivityTable
    from onnxprune.pruning.prune import PruneOptions, prune

    out = {}
    for target in TARGETS:
        made = {}
        for kind, table in tables.items():
            options = PruneOptions(ratio=target, sensitivity=SensitivityTable.from_dict(table), mode="sparse")
            made[kind] = prune(onnxprune.load(*model), options)
        removed = {kind: {g: list(p.removed) for g, p in r.plan.groups.items() if len(p.removed)}
                   for kind, r in made.items()}
        same = removed["full"] == removed["adaptive"]
        scores = {kind: fidelity(model, r.model, held_out) for kind, r in made.items()} if not same else {}
        out[target] = {"identical": same, "macs": {k: r.plan.macs_ratio for k, r in made.items()}, "fidelity": scores}
    return out


def fidelity(model: tuple[Path, dict | None], pruned, held_out: dict) -> float:
    """1 - the mean relative distance of the pruned model's outputs to the unpruned one's, on `held_out`."""
    import onnx

    import onnxprune
    from onnxprune.analysis.metrics import relative_distance
    from onnxprune.graph.model import with_weights
    from onnxprune.graph.runtime import session

    def outputs(model) -> list[np.ndarray]:
        sess = session(model if isinstance(model, onnx.ModelProto) else with_weights(model))
        n = len(next(iter(held_out.values())))
        parts = [sess.run(None, {k: v[i:i + 16] for k, v in held_out.items()}) for i in range(0, n, 16)]
        return [np.concatenate(p) for p in zip(*parts)]

    reference = outputs(onnxprune.load(*model))
    n = len(next(iter(held_out.values())))
    return float(1 - np.mean(relative_distance(outputs(pruned), reference, n)))


def bench(name: str, samples: int, fresh: bool, cover: float | None, reuse: bool) -> dict:
    path, shapes, data, held_out = MODELS[name](samples)
    model = (path, shapes)
    WORK.mkdir(parents=True, exist_ok=True)
    data_path = WORK / f"{name}_{samples}.npz"
    np.savez(data_path, **data)
    full = full_table(name, model, data_path, fresh)
    saved = WORK / f"{name}_adaptive.json"
    if reuse and saved.exists():
        adaptive = json.loads(saved.read_text())
    else:
        adaptive = analyze_once(model, data_path, False, cover)
        saved.write_text(json.dumps(adaptive))
    compared = plans(model, {"full": full["table"], "adaptive": adaptive["table"]}, held_out)
    return {"model": name, "groups": len(full["table"]["groups"]), "full": _summary(full),
            "adaptive": _summary(adaptive), "plans": compared}


def _summary(run: dict) -> dict:
    return {k: run.get(k) for k in ("cost", "seconds", "cpu_seconds", "entries", "evaluated", "decided_macs")}


def verdict(result: dict) -> dict:
    """The goals for one model."""
    plans_ok = all(p["identical"] or abs(p["fidelity"]["adaptive"] - p["fidelity"]["full"])
                   <= GOAL_METRIC * abs(p["fidelity"]["full"]) for p in result["plans"].values())
    ok = {"plans": plans_ok}
    if result["model"] == "resnet50":
        ok["cost"] = result["adaptive"]["cost"] <= GOAL_EVALUATIONS
    else:
        ok["minutes"] = result["adaptive"]["seconds"] / 60 < GOAL_MINUTES
        ok["cpu_minutes"] = (result["adaptive"]["cpu_seconds"] or 0) / 60 < GOAL_MINUTES
    return ok


def report(results: list[dict]) -> None:
    print(f"{'model':<9} {'table':<9} {'entries':>7} {'cost (evals)':>12} {'wall s':>7} {'CPU s':>7} {'decided':>8}  "
          + "  ".join(f"plan at {t:.0%} of MACs" for t in TARGETS))
    for r in results:
        for kind in ("full", "adaptive"):
            s = r[kind]
            cells = []
            for t in TARGETS:
                p = r["plans"][t]
                if kind == "full":
                    cells.append(f"{p['macs']['full']:.1%} removed")
                elif p["identical"]:
                    cells.append("identical")
                else:
                    f0, f1 = p["fidelity"]["full"], p["fidelity"]["adaptive"]
                    cells.append(f"differs: fid. {f1:.4f} vs {f0:.4f} ({(f1 - f0) / abs(f0):+.2%})")
            decided = "-" if s["decided_macs"] is None else f"{s['decided_macs']:.0%}"
            cpu = "-" if s["cpu_seconds"] is None else f"{s['cpu_seconds']:.0f}"
            print(f"{r['model']:<9} {kind:<9} {s['entries']:>7} {s['cost']:>12.1f} {s['seconds']:>7.0f} {cpu:>7} "
                  f"{decided:>8}  " + "  ".join(f"{c:<20}" for c in cells))
        ratio = r["full"]["cost"] / r["adaptive"]["cost"] if r["adaptive"]["cost"] else float("nan")
        print(f"{'':<9} adaptive costs {1 / ratio:.0%} of the full table ({ratio:.1f}x less); goals: {verdict(r)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,yolov8n")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--fresh", action="store_true", help="recompute the full tables")
    parser.add_argument("--reuse", action="store_true", help="reuse the last adaptive table too (only replan)")
    parser.add_argument("--cover", type=float, help="analyze --cover for the adaptive table (default: its default)")
    args = parser.parse_args()
    results = [bench(name, args.samples, args.fresh, args.cover, args.reuse) for name in args.models.split(",")]
    report(results)
    print(json.dumps({"benchmark": "analysis_cost", "samples": args.samples, "cover": args.cover,
                      "results": [{**r, "plans": {str(t): p for t, p in r["plans"].items()}} for r in results],
                      "goals": {"resnet50_evaluations": GOAL_EVALUATIONS, "detector_minutes": GOAL_MINUTES,
                                "metric": GOAL_METRIC},
                      "ok": all(all(verdict(r).values()) for r in results)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
