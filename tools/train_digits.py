"""Train DigitsCNN on scikit-learn's bundled digits and export it as fixtures/digits_cnn.onnx.

A really trained model lets tests and benchmarks measure what pruning does to accuracy, offline.
Training is deterministic (fixed seed, one thread, deterministic algorithms) and takes seconds.
Also writes the test and train splits to fixtures/digits_{test,train}.npz.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # so `python tools/train_digits.py` can import tools.*
    sys.path.insert(0, str(ROOT))

from tools.digits_data import DIGITS_INPUT_SHAPE, DigitsCNN, fit, load_digits_split
from tools.make_fixtures import (
    check_against_torch,
    export_torchscript,
    quiet_exporters,
    write_if_changed,
)

FIXTURES_DIR = ROOT / "fixtures"
EPOCHS = 30
BATCH = 64
MIN_ACCURACY = 0.97


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    """Adam with a cosine schedule over shuffled mini-batches; every random draw comes from seed 0."""
    torch.manual_seed(0)
    model = DigitsCNN()
    fit(model, x_train, y_train, EPOCHS, lr=3e-3, weight_decay=1e-4, cosine=True, seed=0, batch=BATCH)
    return model


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a PyTorch model."""
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((predicted == y).mean())


def onnx_accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of the exported model under onnxruntime, to be sure the file is what we trained."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x})
    return float((logits.argmax(1) == y).mean())


def npz_bytes(**arrays: np.ndarray) -> bytes:
    """Serialise arrays as a compressed .npz in memory; numpy stamps zip entries with a fixed date, so
    the bytes are deterministic. Pixels take only 17 values, so compression shrinks them ~10x."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    quiet_exporters()
    x_train, y_train, x_test, y_test = load_digits_split()
    model = train(x_train, y_train)
    train_acc = accuracy(model, x_train, y_train)
    test_acc = accuracy(model, x_test, y_test)
    print(f"train accuracy {train_acc:.4f}, test accuracy {test_acc:.4f} ({len(y_test)} test images)")
    if test_acc < MIN_ACCURACY:
        print(f"test accuracy below {MIN_ACCURACY}; not writing fixtures", file=sys.stderr)
        return 1

    exported = export_torchscript(model, DIGITS_INPUT_SHAPE)
    error = check_against_torch(exported, model, DIGITS_INPUT_SHAPE)
    onnx_acc = onnx_accuracy(exported, x_test, y_test)
    print(f"onnxruntime test accuracy {onnx_acc:.4f}, max relative error vs torch {error:.1e}")
    FIXTURES_DIR.mkdir(exist_ok=True)
    outputs = {
        "digits_cnn.onnx": exported.SerializeToString(),
        "digits_test.npz": npz_bytes(input=x_test, labels=y_test),
        "digits_train.npz": npz_bytes(input=x_train, labels=y_train),
    }
    for name, data in outputs.items():
        status = write_if_changed(FIXTURES_DIR / name, data)
        print(f"{name:18s} {len(data):8d} bytes  {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
