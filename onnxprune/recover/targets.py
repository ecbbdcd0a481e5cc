"""What the unpruned model computes at a layer's sampled rows: the targets reconstruction fits to.

Reconstruction's unpruned run goes ahead of the pruned one (`grams.layer_sums`, a window of layers at a
time); for each layer it draws the rows (sample, output position) the least squares will use and keeps
the unpruned layer's output there until the pruned run reaches the layer and reads them, batch by batch.
The greedy channel choice runs the same unpruned model over the same layers before the plan is known:
it keeps their targets on disk (`KeptTargets`), and reconstruction then needs no unpruned run of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Self

import numpy as np

from onnxprune.recover.lstsq import sample_rows, wanted_rows
from onnxprune.recover.staged import ActivationStore
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
    computed from them when read). Kept in memory, or in `store` (under `key`) when one is given."""

    def __init__(self, view: LinearView, samples: int, rng: np.random.Generator, originals: dict[str, np.ndarray],
                 store: ActivationStore | None = None, key: str = ""):
        self.view, self.samples, self.rng = view, samples, rng
        matrix, bias = _unpruned_parts(view, originals)
        self.matrix = matrix.astype(np.float32)
        self.bias = bias.reshape(view.groups, 1, -1).astype(np.float32)
        self.inputs = self._inputs(view)
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.values: list[np.ndarray | None] = []
        self.store, self.key = store, key

    @staticmethod
    def _inputs(view: LinearView) -> bool:
        return view.features < view.out_channels // view.groups

    @staticmethod
    def size(view: LinearView) -> int:
        """Bytes it keeps in memory, at most (about)."""
        width = view.features if Target._inputs(view) else view.out_channels // view.groups
        return 4 * view.groups * wanted_rows(view) * width

    def add(self, x0: np.ndarray) -> None:
        who, where = sample_rows(self.view, x0, self.samples, self.rng)
        self.add_rows(who, where, self.view.rows(x0, who, where, np.float32))

    def add_rows(self, who: np.ndarray, where: np.ndarray, rows: np.ndarray) -> None:
        """Keep the unpruned output at the rows `add` would draw: (who, where) and their float32 feature
        rows [groups, R, features]."""
        values = rows if self.inputs else rows @ self.matrix + self.bias
        if self.store is not None:
            self.store.put(self.key, len(self.rows), values)
            values = None
        self.rows.append((who, where))
        self.values.append(values)

    def seal(self) -> None:
        """Every batch is in: drop the unpruned weights where reading does not need them."""
        if not self.inputs:
            self.matrix = self.bias = None

    def batch(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(samples, positions, unpruned output [groups, rows, outputs]) of batch `b` (read once)."""
        values, self.values[b] = self.values[b], None
        if self.store is not None:
            values = self.store.get(self.key, b)
            self.store.drop_one(self.key, b)
        return *self.rows[b], values @ self.matrix + self.bias if self.inputs else values


@dataclass
class KeptTargets:
    """Targets the greedy pass kept for reconstruction, by layer position; their values are on disk."""

    store: ActivationStore = field(default_factory=lambda: ActivationStore(0))
    by_position: dict[int, Target] = field(default_factory=dict)

    def start(self, position: int, view: LinearView, samples: int, seed: int) -> Target:
        """A target for the layer at `position`, its rows drawn as reconstruction would draw them."""
        target = Target(view, samples, np.random.default_rng([seed, position]), {}, self.store, str(position))
        self.by_position[position] = target
        return target

    def close(self) -> None:
        self.store.close()
        self.by_position.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
