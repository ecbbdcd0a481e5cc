"""Shared fixtures: the committed models and a runner for them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
FIXTURE_NAMES = [entry["name"] for entry in MANIFEST]


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.onnx"


def run_model(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def random_batch(shape: list[int], batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal([batch, *shape[1:]]).astype(np.float32)


def relative_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    worst = 0.0
    for x, y in zip(a, b):
        assert x.shape == y.shape
        worst = max(worst, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
    return worst


@pytest.fixture
def manifest() -> list[dict]:
    return MANIFEST
