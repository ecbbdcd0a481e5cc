"""What the unpruned model computes at a layer's sampled rows: the targets reconstruction fits to.

Reconstruction's unpruned run goes ahead of the pruned one (`grams.layer_sums`, a window of layers at a
time); for each layer it draws the rows (sample, output position) the least squares will use and keeps
the unpruned layer's output there until the pruned run reaches the layer and reads them, batch by batch.
"""

from __future__ import annotations

import numpy as np

from onnxprune.recover.lstsq import sample_rows, wanted_rows
from onnxprune.rules import LinearView


def _unpruned_parts(view: LinearView, originals: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The unpruned layer's matrix and bias (its weights as they were before zeroing)."""
    with view.restoring():
        view.weight.values = originals.get(view.weight.name, view.weight.values)
        if view.intercept is not None:
            view.intercept.values = originals.get(view.intercept.name, view.intercept.values)
        return view.matrix(), view.bias()


class Target:
    """The unpruned model at one layer's sampled rows, batch by batch (a `grams.Sums`): the rows drawn
    (sample, output position) and the unpruned layer's output there, in float32 as onnxruntime computes
    it — or its input rows where the layer has fewer features than outputs (less to keep; the output is
    computed from them when read)."""

    def __init__(self, view: LinearView, samples: int, rng: np.random.Generator, originals: dict[str, np.ndarray]):
        self.view, self.samples, self.rng = view, samples, rng
        matrix, bias = _unpruned_parts(view, originals)
        self.matrix = matrix.astype(np.float32)
        self.bias = bias.reshape(view.groups, 1, -1).astype(np.float32)
        self.inputs = self._inputs(view)
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.values: list[np.ndarray | None] = []

    @staticmethod
    def _inputs(view: LinearView) -> bool:
        return view.features < view.out_channels // view.groups

    @staticmethod
    def size(view: LinearView) -> int:
        """Bytes it keeps, at most (about)."""
        width = view.features if Target._inputs(view) else view.out_channels // view.groups
        return 4 * view.groups * wanted_rows(view) * width

    def add(self, x0: np.ndarray) -> None:
        who, where = sample_rows(self.view, x0, self.samples, self.rng)
        rows = self.view.rows(x0, who, where, np.float32)
        self.rows.append((who, where))
        self.values.append(rows if self.inputs else rows @ self.matrix + self.bias)

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(samples, positions, unpruned output [groups, rows, outputs]) of batch `b` (read once)."""
        values, self.values[b] = self.values[b], None
        return *self.rows[b], values @ self.matrix + self.bias if self.inputs else values
