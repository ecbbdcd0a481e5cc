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


SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}
DYNAMIC = {entry["name"]: entry.get("dynamic_axes", []) for entry in MANIFEST}  # besides the batch: a sequence


def fixture_path(name: str) -> Path:
    return FIXTURES / f"{name}.onnx"


def load_fixture(name: str):
    """The fixture loaded as `onnxprune.load` does, its dynamic sequence length given from the manifest."""
    import onnxprune

    return onnxprune.load(fixture_path(name), {"input": tuple(SHAPES[name])} if DYNAMIC.get(name) else None)


def input_shapes(name: str) -> list[list[int]]:
    """The input shapes a fixture is checked at: its own, and with a dynamic sequence length a longer one
    (the slim model must not have the length it was pruned at baked in)."""
    shape = SHAPES[name]
    longer = [d + 5 if a in DYNAMIC.get(name, []) else d for a, d in enumerate(shape)]
    return [shape] + ([longer] if longer != shape else [])


def quantized(model: onnx.ModelProto | str | Path) -> bool:
    """A QDQ model (it quantizes activations)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    return any(node.op_type == "QuantizeLinear" for node in proto.graph.node)


def run_model(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs under onnxruntime. A QDQ model runs as the QDQ format defines it (dequantize, float op,
    quantize): the fused int8 kernels of the extended optimizations round differently by up to one
    output step whatever the channel count, which `tests/test_quantized.py` checks on its own."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if quantized(model):
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
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


def cli(*args: str) -> tuple[int, str, str]:
    """Run the command in-process (fast, same PYTHONPATH): exit code, stdout, stderr."""
    import contextlib
    import io as _io

    from onnxprune.cli import main

    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


def assert_refused(result: tuple[int, str, str], *words: str) -> None:
    """Exit 2 with one error line on stderr naming the problem: the contract for bad input."""
    code, _, err = result
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    errors = [line for line in lines if line.startswith("onnxprune: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err  # warnings may come first; one error, last
    assert "Traceback" not in err and "internal error" not in err
    for word in words:
        assert word in errors[0], errors[0]
