"""onnxprune's iterative loop next to Torch-Pruning's on the digits CNN, at the same MACs target.

Same baseline (DigitsCNN trained as in examples/digits), same number of rounds, same fine-tuning after
each round (the example's `train`: Adam, cosine decay, one trial, the same epochs), L2 magnitude on both
sides. onnxprune runs its loop through the PyTorch adapter with a tolerance that never backs off, so
both get exactly the same training. Torch-Pruning runs `MetaPruner(MagnitudeImportance(p=2),
iterative_steps=rounds)`, its channel ratio bisected until its MACs land on the target. Both results
are exported the same way and measured with onnxruntime: top-1 on the test split, latency at batch 1
and throughput on the whole test split (one thread).

    pip install torch-pruning        # the benchmark's only extra
    python benchmarks/vs_torch_pruning.py [--target 0.8] [--rounds 4] [--epochs 12]

Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import onnx
import onnxruntime as ort
import torch

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "examples" / "digits"):  # tools.* and the example's training code
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from digits_adapter import BASELINE_EPOCHS, split, top1, train

from onnxprune.adapters.torch import TorchAdapter
from onnxprune.graph.load import from_proto
from onnxprune.loop.config import FineTune, PruneSettings, RunConfig, Schedule
from onnxprune.loop.iterate import run
from onnxprune.pruning.cost import layer_costs, totals
from tools.digits_data import DIGITS_INPUT_SHAPE, DigitsCNN

OUT = ROOT / "benchmarks" / "out" / "vs_torch_pruning"


def export(module: torch.nn.Module) -> onnx.ModelProto:
    """The same export for every model compared (TorchScript, BN unfused: onnxruntime fuses it)."""
    return TorchAdapter(module, torch.zeros(DIGITS_INPUT_SHAPE), train=train).export()


def macs_of(module: torch.nn.Module) -> tuple[int, int]:
    """(MACs, params) counted by onnxprune on the export, so both sides are counted the same way."""
    return totals(layer_costs(from_proto(export(module))))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(model: onnx.ModelProto) -> dict[str, float]:
    """Test top-1 (%), median batch-1 latency (us) and whole-test-split throughput (images/s)."""
    data = split()
    sess = session(model)
    x = data["x_test"]
    (logits,) = sess.run(None, {"input": x})
    single = x[:1]
    for _ in range(50):
        sess.run(None, {"input": single})
    times = []
    for _ in range(2000):
        start = time.perf_counter()
        sess.run(None, {"input": single})
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(20):
        sess.run(None, {"input": x})
    throughput = 20 * len(x) / (time.perf_counter() - start)
    return {"top1": float((logits.argmax(1) == data["y_test"]).mean() * 100),
            "latency_us": statistics.median(times) * 1e6, "images_per_s": throughput}


def baseline_module() -> DigitsCNN:
    """DigitsCNN trained exactly as examples/digits trains its baseline."""
    torch.manual_seed(0)
    module = DigitsCNN()
    train(module, {"lr": 3e-3, "epochs": BASELINE_EPOCHS, "decay": "cosine"})
    return module.eval()


def with_onnxprune(baseline: DigitsCNN, target: float, rounds: int, settings: dict) -> tuple[onnx.ModelProto, float]:
    module = copy.deepcopy(baseline)
    adapter = TorchAdapter(module, torch.zeros(DIGITS_INPUT_SHAPE), train=train, evaluate=top1)
    config = RunConfig(schedule=Schedule(target=target, step=target / rounds, tolerance=100.0, max_backoffs=0),
                       prune=PruneSettings(criterion="l2"), finetune=FineTune(settings=dict(settings)))
    workdir = OUT / "onnxprune-work"
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    result = run(config, adapter, workdir, adapter.export(), progress=lambda _: None)
    seconds = time.perf_counter() - start
    if len(result.rounds) != rounds or result.stopped:
        raise SystemExit(f"onnxprune ran {len(result.rounds)} rounds (stopped: {result.stopped})")
    return onnx.load(result.dense), seconds


def _tp_pruner(module: torch.nn.Module, ratio: float, rounds: int):
    import torch_pruning as tp

    return tp.pruner.MetaPruner(module, torch.zeros(DIGITS_INPUT_SHAPE), importance=tp.importance.MagnitudeImportance(p=2),
                                pruning_ratio=ratio, iterative_steps=rounds, ignored_layers=[module.fc])


def tp_ratio(baseline: DigitsCNN, goal_macs: float, rounds: int) -> float:
    """Torch-Pruning's channel ratio whose final MACs come closest to the goal (bisection)."""
    def final_macs(ratio: float) -> int:
        module = copy.deepcopy(baseline)
        pruner = _tp_pruner(module, ratio, rounds)
        for _ in range(rounds):
            pruner.step()
        return macs_of(module)[0]

    low, high = 0.0, 0.99
    for _ in range(25):
        mid = (low + high) / 2
        if final_macs(mid) > goal_macs:
            low = mid
        else:
            high = mid
    return min((low, high), key=lambda r: abs(final_macs(r) - goal_macs))


def with_torch_pruning(baseline: DigitsCNN, target: float, rounds: int, settings: dict) -> tuple[onnx.ModelProto, float]:
    goal = (1 - target) * macs_of(baseline)[0]
    ratio = tp_ratio(baseline, goal, rounds)
    module = copy.deepcopy(baseline)
    start = time.perf_counter()
    pruner = _tp_pruner(module, ratio, rounds)
    for _ in range(rounds):
        pruner.step()
        train(module, dict(settings))
    return export(module.eval()), time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.8, help="fraction of MACs to remove (default 0.8)")
    parser.add_argument("--rounds", type=int, default=4, help="prune/fine-tune rounds (default 4)")
    parser.add_argument("--epochs", type=int, default=12, help="fine-tuning epochs per round (default 12)")
    args = parser.parse_args()
    try:
        import torch_pruning  # noqa: F401
    except ModuleNotFoundError:
        print("this benchmark needs Torch-Pruning: pip install torch-pruning", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    settings = {"lr": 3e-3, "epochs": args.epochs, "decay": "cosine", "weight_decay": 1e-4}
    baseline = baseline_module()
    models = {"baseline": (export(baseline), 0.0)}
    print(f"onnxprune: {args.rounds} rounds to {args.target:.0%} of MACs ...", file=sys.stderr)
    models["onnxprune"] = with_onnxprune(baseline, args.target, args.rounds, settings)
    print(f"Torch-Pruning: {args.rounds} steps to {args.target:.0%} of MACs ...", file=sys.stderr)
    models["torch-pruning"] = with_torch_pruning(baseline, args.target, args.rounds, settings)

    rows = {}
    base_macs = totals(layer_costs(from_proto(models["baseline"][0])))[0]
    for name, (model, seconds) in models.items():
        macs, params = totals(layer_costs(from_proto(model)))
        rows[name] = {"macs": macs, "macs_removed": round(1 - macs / base_macs, 4), "params": params,
                      **measure(model), "prune_and_finetune_s": round(seconds, 1)}
        onnx.save(model, OUT / f"{name}.onnx")
    print(f"{'':14} {'MACs':>8} {'removed':>8} {'params':>7} {'top-1 %':>8} {'latency us':>11} {'img/s':>9} "
          f"{'time s':>7}")
    for name, r in rows.items():
        print(f"{name:14} {r['macs']:>8} {r['macs_removed']:>8.1%} {r['params']:>7} {r['top1']:>8.2f} "
              f"{r['latency_us']:>11.1f} {r['images_per_s']:>9.0f} {r['prune_and_finetune_s']:>7.1f}")
    print(json.dumps({"benchmark": "vs_torch_pruning", "target": args.target, "rounds": args.rounds,
                      "epochs": args.epochs, "results": rows,
                      "onnxprune_minus_torch_pruning_top1": round(rows["onnxprune"]["top1"] - rows["torch-pruning"]["top1"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
