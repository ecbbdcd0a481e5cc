"""Does sensitivity-guided allocation keep more accuracy than uniform pruning? The digits CNN, no fine-tuning.

The model is fixtures/digits_cnn.onnx (tools/train_digits.py: scikit-learn's load_digits, split with
train_test_split(test_size=0.25, random_state=0, stratify=y), input pixels/16 as float32 [N,1,8,8]).
Sensitivity is analyzed on the *train* split (top-1 with its labels, and the label-free fidelity
without them); every model is scored by top-1 on the *test* split, which analysis never sees.

At 50% and 70% of MACs removed (each plan lands within 1% of the target):
- uniform: one channel fraction for every group (`prune --ratio R`), L1-smallest channels;
- sensitivity-guided: per-group ratios from the table (`prune --ratio R --sens SENS.json`);
- random channels: uniform fractions, channels drawn at random (mean over seeds): the floor.

    python benchmarks/allocation.py [--seeds 20]

Prints a table, then one JSON line; "ok" says whether guided beats uniform at both points.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "fixtures" / "digits_cnn.onnx"
TRAIN, TEST = ROOT / "fixtures" / "digits_train.npz", ROOT / "fixtures" / "digits_test.npz"
OUT = ROOT / "benchmarks" / "out"
TARGETS = (0.5, 0.7)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="random-channel draws per target")
    args = parser.parse_args()

    import onnxprune
    from onnxprune.analysis.analyze import AnalyzeOptions, analyze
    from onnxprune.graph.runtime import session
    from onnxprune.pruning.channels import find_groups
    from onnxprune.pruning.plan import Planner, candidate_groups, uniform_ratios
    from onnxprune.pruning.prune import PruneOptions, prune
    from onnxprune.pruning.surgery import slim

    with np.load(TEST) as npz:
        x_test, y_test = npz["input"], npz["labels"]
    OUT.mkdir(parents=True, exist_ok=True)
    unlabeled = OUT / "digits_train_unlabeled.npz"
    with np.load(TRAIN) as npz:
        np.savez(unlabeled, input=npz["input"])

    def accuracy(proto) -> float:
        return float(np.mean(session(proto).run(None, {"input": x_test})[0].argmax(1) == y_test))

    tables = {name: analyze(onnxprune.load(MODEL), AnalyzeOptions(data=str(data), exact=True)).table
              for name, data in (("top1", TRAIN), ("fidelity", unlabeled))}
    base = onnxprune.load(MODEL)
    rows = {"unpruned": {t: accuracy(onnxprune.graph.model.with_weights(base)) for t in TARGETS}}
    removed: dict[str, dict[float, float]] = {}

    def record(name: str, target: float, plan, proto) -> None:
        rows.setdefault(name, {})[target] = accuracy(proto)
        removed.setdefault(name, {})[target] = plan.macs_ratio

    for target in TARGETS:
        result = prune(onnxprune.load(MODEL), PruneOptions(ratio=target))
        record("uniform (L1)", target, result.plan, result.model)
        for name, table in tables.items():
            result = prune(onnxprune.load(MODEL), PruneOptions(ratio=target, sensitivity=table))
            record(f"sensitivity ({name} on train)", target, result.plan, result.model)
        model = onnxprune.load(MODEL)
        groups = find_groups(model)
        candidates = candidate_groups(model, groups, [])
        draws = []
        for seed in range(args.seeds):
            rng = np.random.default_rng(seed)
            planner = Planner(model, groups, {g.id: rng.random(g.channels) for g in candidates})
            plan = planner.fit(uniform_ratios(candidates), target)
            draws.append(accuracy(slim(model, groups, plan)))
        rows.setdefault("random channels (floor)", {})[target] = float(np.mean(draws))
        removed.setdefault("random channels (floor)", {})[target] = plan.macs_ratio

    print(f"digits CNN, top-1 on the test split ({len(y_test)} images), no fine-tuning")
    print(f"{'allocation (top-1, MACs removed)':<34}" + "".join(f"{f'target {t:.0%}':>22}" for t in TARGETS))
    for name, row in rows.items():
        cells = [f"{row[t]:.4f}" + (f" ({removed[name][t]:.1%})" if name in removed else "") for t in TARGETS]
        print(f"{name:<34}" + "".join(f"{c:>22}" for c in cells))
    guided = rows["sensitivity (top1 on train)"]
    wins = all(guided[t] > rows["uniform (L1)"][t] for t in TARGETS)
    print("sensitivity-guided beats uniform at both points" if wins else "sensitivity-guided does NOT beat uniform")
    print(json.dumps({"benchmark": "allocation", "model": "digits_cnn", "test_samples": len(y_test),
                      "top1": {name: {str(t): round(v, 4) for t, v in row.items()} for name, row in rows.items()},
                      "macs_removed": {name: {str(t): round(v, 4) for t, v in row.items()}
                                       for name, row in removed.items()},
                      "ok": wins}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
