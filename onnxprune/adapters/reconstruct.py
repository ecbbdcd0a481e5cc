"""The adapter for people without the training code: no training, the loop's reconstruction is the recovery.

With `[prune] data = "calib.npz"` every round re-solves the layers reading removed channels on that data
(`prune --data`); `[adapter] kind = "reconstruct"` then leaves the model as the round made it and scores
models on the same data: top-1 when the file has `labels`, else fidelity to the starting model's outputs
(1 - mean relative L2 distance, as `analyze` without labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from onnxprune.adapters import Masks, Settings
from onnxprune.analysis.metrics import relative_distance
from onnxprune.data import LABELS, check_data, read_arrays, session_specs
from onnxprune.graph.runtime import session

BATCH = 32


class ReconstructAdapter:
    """`fine_tune` returns the model unchanged; `evaluate` runs it on `data` (an .npz, or arrays)."""

    def __init__(self, data: str | Path | dict[str, np.ndarray], reference: onnx.ModelProto | str | Path | None = None):
        self.arrays = read_arrays(data) if isinstance(data, (str, Path)) else dict(data)
        self.where = str(data) if isinstance(data, (str, Path)) else "adapter data"
        self.labels = self.arrays.get(LABELS)
        self.reference = reference
        self._reference_outputs: list[np.ndarray] | None = None

    def fine_tune(self, model: onnx.ModelProto, masks: Masks, settings: Settings) -> onnx.ModelProto:
        return model

    def evaluate(self, model: onnx.ModelProto) -> float:
        outputs = self._run(model)
        if self.labels is not None:
            return float(np.mean(outputs[0].argmax(axis=1) == self.labels))
        if self._reference_outputs is None:
            reference = self.reference if self.reference is not None else model
            if not isinstance(reference, onnx.ModelProto):
                reference = onnx.load(str(reference))
            self._reference_outputs = self._run(reference)
        n = len(outputs[0])
        return float(1.0 - np.mean(relative_distance(outputs, self._reference_outputs, n)))

    def _run(self, model: onnx.ModelProto) -> list[np.ndarray]:
        sess = session(model)
        data = check_data(self.arrays, session_specs(sess.get_inputs()), self.where, BATCH)
        parts = [sess.run(None, feeds) for _, feeds in data.batches()]
        return [np.concatenate(out) for out in zip(*parts)]
