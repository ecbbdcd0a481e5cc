"""The digits CNN of fixtures/ (tools/train_digits.py): top-1 on the test split; calibration is the train
split's images without their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from . import Task, run_batched

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CALIB = 256


def load(samples_calib: int) -> Task:
    with np.load(FIXTURES / "digits_train.npz") as npz:
        calib = npz["input"][:samples_calib]
    with np.load(FIXTURES / "digits_test.npz") as npz:
        x_test, y_test = npz["input"], npz["labels"]

    def evaluate(proto: onnx.ModelProto) -> float:
        logits = run_batched(proto, {"input": x_test}, batch=len(x_test))[0]
        return float(np.mean(logits.argmax(1) == y_test))

    path = FIXTURES / "digits_cnn.onnx"
    return Task("digits CNN", "classifier", path, {}, {"input": calib}, "top-1", evaluate)
