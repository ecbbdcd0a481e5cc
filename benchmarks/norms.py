"""What the exact LayerNorm rewrite costs: latency of the slim model's norm, exact vs approximate.

With channels removed from the hidden dimension, onnxprune's default slim model (`norms="exact"`) replaces
a fused LayerNormalization by a small subgraph that keeps the original channel count (ReduceMean, Sub,
ReduceSumSquare, a few elementwise ops), so that it computes what the sparse model computes; the
approximate form (`norms="approximate"`, what Torch-Pruning's models compute) keeps a fused LayerNorm
over the kept channels. RMSNorm stays fused in both (epsilon and scale absorb the count), and a mean over
channels gains one Mul on the reduced tensor: neither is measured here.

For each shape, a model `MatMul(d -> h) + bias -> LayerNorm(h) -> MatMul(h -> d)` is pruned on h with
onnxprune (exact and approximate), and onnxruntime (CPU, one thread, all graph optimizations) times:
the LayerNorm alone (the subgraph between the first layer's output and the norm's output, extracted from
each model) and the whole model. Sessions are timed round-robin in the same run, so the ratios compare
like with like on a loaded machine. Prints a table, then one JSON line.

    python benchmarks/norms.py [--hidden 768] [--tokens 128] [--batches 1,8] [--keep 0.5,0.75] [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.pruning.prune import PruneOptions, prune


def block(hidden: int, tokens: int) -> onnx.ModelProto:
    """MatMul(d -> h) + b -> LayerNormalization -> MatMul(h -> d); d = h."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((hidden, hidden)) / np.sqrt(hidden), "b1": rng.standard_normal(hidden),
             "g": 1 + 0.2 * rng.standard_normal(hidden), "beta": 0.1 * rng.standard_normal(hidden),
             "w2": rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)}
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h0"], name="fc1"),
             helper.make_node("Add", ["h0", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("LayerNormalization", ["h", "g", "beta"], ["n"], name="norm", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["output"], name="fc2")]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", tokens, hidden])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", tokens, hidden])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def norm_only(model: onnx.ModelProto, folder: Path, name: str) -> onnx.ModelProto:
    """The subgraph from the first layer's output `h` to the norm's output `n`."""
    path = folder / f"{name}.onnx"
    onnx.save(model, path)
    out = folder / f"{name}_norm.onnx"
    onnx.utils.extract_model(str(path), str(out), ["h"], ["n"], check_model=False)
    return onnx.load(out)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def time_round_robin(runs: dict[str, tuple[ort.InferenceSession, dict]], repeat: int) -> dict[str, float]:
    """Median microseconds per run of each session, measured interleaved."""
    for sess, feeds in runs.values():
        for _ in range(10):
            sess.run(None, feeds)
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeat):
        for key, (sess, feeds) in runs.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            samples[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) * 1e6 for k, v in samples.items()}


def measure(hidden: int, tokens: int, batch: int, keep: float, repeat: int, folder: Path) -> dict:
    proto = block(hidden, tokens)
    spec = {"fc1": 1 - keep}
    models = {"original": proto}
    for norms in ("exact", "approximate"):
        result = prune(onnxprune.graph.load.from_proto(proto), PruneOptions(spec=spec, round_to=1, norms=norms))
        models[norms] = result.model
        if norms == "approximate":
            gap = result.approximation
    kept = round(hidden * keep)
    x = np.random.default_rng(1).standard_normal((batch, tokens, hidden)).astype(np.float32)
    h = {"original": x[..., :hidden], "exact": x[..., :kept], "approximate": x[..., :kept]}
    runs = {f"model/{k}": (session(m), {"input": x}) for k, m in models.items()}
    runs.update({f"norm/{k}": (session(norm_only(m, folder, f"{k}_{hidden}_{batch}_{keep}")), {"h": h[k]})
                 for k, m in models.items()})
    us = time_round_robin(runs, repeat)
    nodes = {k: len(norm_only(m, folder, f"n_{k}").graph.node) for k, m in models.items()}
    return {"hidden": hidden, "kept": kept, "tokens": tokens, "batch": batch, "us": us, "norm_nodes": nodes,
            "exact_over_approximate_norm": us["norm/exact"] / us["norm/approximate"],
            "exact_over_original_norm": us["norm/exact"] / us["norm/original"],
            "exact_over_approximate_model": us["model/exact"] / us["model/approximate"],
            "approximate_difference": gap}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--keep", default="0.5,0.75")
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (int(b) for b in args.batches.split(",")):
            for keep in (float(k) for k in args.keep.split(",")):
                rows.append(measure(args.hidden, args.tokens, batch, keep, args.repeat, Path(tmp)))
    print(f"{'batch':>5} {'h':>5} {'kept':>5} | {'LN orig':>8} {'LN approx':>9} {'LN exact':>9} {'exact/approx':>12} "
          f"{'exact/orig':>10} | {'model approx':>12} {'model exact':>11} {'ratio':>6} | {'approx diff':>11}")
    for r in rows:
        us = r["us"]
        print(f"{r['batch']:>5} {r['hidden']:>5} {r['kept']:>5} | {us['norm/original']:>8.1f} "
              f"{us['norm/approximate']:>9.1f} {us['norm/exact']:>9.1f} {r['exact_over_approximate_norm']:>12.2f} "
              f"{r['exact_over_original_norm']:>10.2f} | {us['model/approximate']:>12.1f} {us['model/exact']:>11.1f} "
              f"{r['exact_over_approximate_model']:>6.3f} | {r['approximate_difference']:>11.2e}")
    print("(microseconds, median; LN = the norm alone: fused LayerNormalization, or the exact subgraph of "
          f"{rows[0]['norm_nodes']['exact']} nodes; model = MatMul + LN + MatMul)")
    print(json.dumps({"benchmark": "norms", "onnxruntime": ort.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
