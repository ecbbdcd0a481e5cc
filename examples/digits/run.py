"""The second example (torch: `pip install -e '.[digits]'`): prune a small CNN in rounds, fine-tuning it.

    python examples/digits/run.py [--fresh]

Trains DigitsCNN on scikit-learn's digits (a few seconds), then runs `onnxprune.loop.iterate` with the
settings of run.toml: prune to 20%, 40%, 60%, 80% of the MACs, fine-tuning after each round through the
PyTorch adapter (two learning rates per round, the better one kept), transform to the dense model and
encrypt it. Writes, in examples/digits/out/:

    baseline.onnx        the trained model
    dense.onnx           the pruned, fine-tuned, slimmed model
    dense.onnx.enc       the same, AES-256-GCM encrypted (key: digits.key)
    report.json          the per-round table and the final test-split numbers
    work/                the loop's checkpoints: run again to resume; --fresh starts over

Prints the table and, last, one JSON line with the test-split top-1 of baseline and dense model
(measured with onnxruntime on the files written), the MACs removed and the time taken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from digits_adapter import BASELINE, OUT, make_adapter, split  # this folder is on sys.path when run

from onnxprune.atomic import write_text
from onnxprune.graph.runtime import session
from onnxprune.loop.config import load_config
from onnxprune.loop.iterate import run
from onnxprune.loop.result import format_table

HERE = Path(__file__).resolve().parent


def top1_on_test(sess) -> float:
    """Top-1 in percent of an onnxruntime session on the test split."""
    data = split()
    (logits,) = sess.run(None, {"input": data["x_test"]})
    return float((np.argmax(logits, 1) == data["y_test"]).mean() * 100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fresh", action="store_true", help="delete examples/digits/out first")
    args = parser.parse_args()
    if args.fresh and OUT.exists():
        shutil.rmtree(OUT)
    start = time.perf_counter()
    config = load_config(HERE / "run.toml")
    key = Path(config.encrypt.key_file)
    if not key.exists():
        from onnxprune.secure import write_key_file

        write_key_file(key)
    adapter = make_adapter()  # trains and writes out/baseline.onnx on first use
    result = run(config, adapter, OUT / "work")
    print(format_table(result))

    import onnx

    from onnxprune.secure import load_session

    baseline_top1 = top1_on_test(session(onnx.load(str(BASELINE))))
    dense_top1 = top1_on_test(session(onnx.load(result.dense)))
    encrypted_top1 = top1_on_test(load_session(result.encrypted, key_file=key))
    summary = {
        "example": "digits", "macs_removed": round(result.macs_removed, 4), "macs": result.macs,
        "baseline_macs": result.baseline_macs, "params": result.params, "baseline_params": result.baseline_params,
        "test_top1_baseline": baseline_top1, "test_top1_dense": dense_top1,
        "test_top1_drop": round(baseline_top1 - dense_top1, 3), "test_top1_encrypted": encrypted_top1,
        "val_top1_baseline": result.baseline_metric, "val_top1_final": result.metric,
        "rounds": len(result.rounds), "stopped": result.stopped, "seconds": round(time.perf_counter() - start, 1),
    }
    write_text(OUT / "report.json", json.dumps({"summary": summary, "run": result.to_dict()}, indent=1) + "\n")
    print(f"test split top-1: baseline {baseline_top1:.2f}%, dense {dense_top1:.2f}% "
          f"({result.macs_removed:.1%} of MACs removed); encrypted model: {encrypted_top1:.2f}%")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
