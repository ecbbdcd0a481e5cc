"""Would several ratios of one group in one onnxruntime run make analysis cheaper? (issue 11, item 3)

In mask mode one suffix session serves every ratio of a group, the 0/1 mask being an input. With the
mask's batch axis left free, k ratios can run as one batch of k x 16 samples: the cut tensors repeated
k times, each copy with its own mask. Same MACs; what could be saved is per-run overhead (thread
hand-offs, small-batch kernels). This measures wall time per entry, both ways interleaved in the same
process with the same threads, on a few groups at different depths, and checks the outputs are equal.

    python benchmarks/analysis_batched.py --models resnet50,yolov8n [--ratios 4] [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import analysis_cost

from onnxprune.analysis.entries import entries
from onnxprune.graph.model import with_weights
from onnxprune.graph.runtime import session
from onnxprune.graph.split import split

BATCH = 8  # samples per entry and batch in the adaptive analysis


def batched_suffix(suffix: onnx.ModelProto, masks: list[str]) -> onnx.ModelProto:
    """The suffix with each mask input's batch axis left free (one mask per sample)."""
    for value in suffix.graph.input:
        if value.name in masks:
            dim = value.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = "n"
    return suffix


def batched_axis(array: np.ndarray) -> bool:
    """Whether a cut tensor carries the samples on axis 0 (a detector's anchors, made from shapes, do not)."""
    return array.ndim > 0 and array.shape[0] == BATCH


def stack(array: np.ndarray, k: int) -> np.ndarray:
    """A cut tensor for k ratios at once: samples repeated k times; a shape computed in the prefix (an
    int64 vector starting with the batch size, as a detector head's Reshape targets are) scaled to match."""
    if array.dtype == np.int64 and array.ndim == 1 and len(array) > 1 and array[0] == BATCH:
        return np.concatenate([[BATCH * k], array[1:]]).astype(np.int64)
    return np.concatenate([array] * k) if batched_axis(array) else array


def time_group(proto: onnx.ModelProto, job, feeds: dict, k: int, repeats: int, threads: int) -> dict:
    """Median seconds per entry: k runs of BATCH samples against one run of k x BATCH samples."""
    cut = split(proto, masks=job.points)
    prefix = cut.prefix({})
    values = dict(zip(cut.prefix_outputs(), session(prefix, threads=threads).run(cut.prefix_outputs(), feeds)))
    values.update({n: feeds[n] for n in cut.cut if n in feeds})
    cut_values = {n: values[n] for n in cut.cut}
    dtypes = {n: a.dtype for n, a in cut_values.items()}
    plain = session(cut.suffix(dtypes), threads=threads)
    batched = session(batched_suffix(cut.suffix(dtypes), list(cut.masks)), threads=threads)
    chosen = job.entries[:k]
    masks = [{name: point.mask(z) for (name, point), z in zip(cut.masks.items(), e.zeroed)} for e in chosen]
    outputs = cut.changed_outputs

    def separate() -> list[list[np.ndarray]]:
        return [plain.run(outputs, {**cut_values, **m}) for m in masks]

    def together() -> list[np.ndarray]:
        stacked = {n: stack(a, len(masks)) for n, a in cut_values.items()}
        for name in cut.masks:
            stacked[name] = np.concatenate([np.repeat(m[name], BATCH, axis=0) for m in masks])
        return batched.run(outputs, stacked)

    a, b = separate(), together()  # warm-up, and the check
    diff = max(float(np.max(np.abs(np.concatenate([r[i] for r in a]) - b[i]))) for i in range(len(outputs)))
    times = {"separate": [], "batched": []}
    for _ in range(repeats):
        for kind, fn in (("separate", separate), ("batched", together)):
            start = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - start)
    med = {kind: float(np.median(t)) / len(masks) for kind, t in times.items()}
    return {"group": job.group, "entries": len(masks), "suffix_nodes": len(cut.suffix_nodes()),
            "seconds_per_entry": med, "speedup": med["separate"] / med["batched"], "max_abs_diff": diff}


def bench(name: str, k: int, repeats: int, threads: int) -> dict:
    model, groups, targets, planner, data = analysis_cost.l1_planner(name)
    keys = [f"{r / 10:g}" for r in range(1, 10)]
    picked = [targets[int(i)] for i in np.linspace(0, len(targets) - 1, 4)]
    plans = {(g.id, key): planner.plan({g.id: float(key)}) for g in picked for key in keys}
    work = entries(model, groups, plans, [(g, key) for g in picked for key in keys])
    proto = with_weights(model)
    feeds = {n: a[:BATCH] for n, a in data.items()}
    rows = [time_group(proto, job, feeds, k, repeats, threads) for job in work.jobs if job.points]
    total = {kind: sum(r["seconds_per_entry"][kind] for r in rows) for kind in ("separate", "batched")}
    return {"model": name, "threads": threads, "groups": rows, "speedup": total["separate"] / total["batched"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,yolov8n")
    parser.add_argument("--ratios", type=int, default=4, help="ratios per batched run")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8, help="samples per ratio")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    global BATCH
    BATCH = args.batch
    for name in args.models.split(","):
        result = bench(name, args.ratios, args.repeats, args.threads)
        for r in result["groups"]:
            s = r["seconds_per_entry"]
            print(f"{name:<9} {r['group'][:40]:<40} {r['suffix_nodes']:>4} nodes  separate {s['separate'] * 1e3:7.1f} ms"
                  f"  batched {s['batched'] * 1e3:7.1f} ms  x{r['speedup']:.2f}  (max diff {r['max_abs_diff']:.1e})")
        print(f"{name}: {args.ratios} ratios of {BATCH} samples per run, {args.threads} threads: "
              f"x{result['speedup']:.2f} per entry")
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
