"""Calibration data for `prune --data`: the `.npz` format `analyze` reads (or arrays from a caller),
checked against the model and cut into batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

from onnxprune.data import DEFAULT_BATCH, LABELS, check_data, model_specs, read_arrays
from onnxprune.graph.model import Model
from onnxprune.recover.staged import ActivationStore

BATCH_BYTES = 4 << 20  # input bytes per calibration batch

Batches = list[dict[str, np.ndarray]]


def calibration_batches(model: Model, data: str | os.PathLike | Mapping[str, np.ndarray]) -> Batches:
    """The calibration data as batches of model inputs (labels are ignored), checked against the model.

    Batches hold about `BATCH_BYTES` of input: activations scale with the input, and small batches keep
    onnxruntime's working memory low at no cost in speed (a 640x640 detector ran 2x faster staged with
    8 images per batch than with 32; ResNet-50 at 224x224 peaked at 1.2 GB with 13 per batch).
    """
    if isinstance(data, Mapping):
        arrays, where = {k: v for k, v in data.items() if k != LABELS}, "calibration data"
    else:
        arrays, where = read_arrays(data), str(data)
        arrays.pop(LABELS, None)
    per_sample = sum(np.asarray(a)[:1].nbytes for a in arrays.values())
    size = int(np.clip(BATCH_BYTES // max(per_sample, 1), 1, DEFAULT_BATCH))
    return [feeds for _, feeds in check_data(arrays, model_specs(model), where, batch_size=size).batches()]


class SpilledBatches(Sequence[dict[str, np.ndarray]]):
    """Calibration batches in a temporary folder, read back one batch at a time when asked for.

    A staged run (`staged.StagedRun`) takes every batch when it starts and lets go of each input once
    the nodes reading it have run; held this way, nothing else keeps the data in memory during and
    between the greedy pass and reconstruction (ResNet-50 with 256 images at 224x224: 154 MB)."""

    def __init__(self, batches: Batches):
        self.store = ActivationStore(0)
        self.names = [list(feeds) for feeds in batches]
        try:
            for b, feeds in enumerate(batches):
                for name, array in feeds.items():
                    self.store.put(name, b, array)
        except BaseException:  # a full disk, an interrupt: no folder left behind
            self.store.close()
            raise

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, b: int) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {name: self.store.get(name, b) for name in self.names[b]}

    def clear(self) -> None:
        """Nothing to let go of (`reconstruct` empties a list of batches once its runs have them)."""

    def close(self) -> None:
        self.store.close()


@contextmanager
def calibration_inputs(model: Model, data: str | os.PathLike | Mapping[str, np.ndarray] | None) \
        -> Iterator[Batches | SpilledBatches | None]:
    """`calibration_batches` for the length of a `with` (None without data). Data read here from a file
    is kept on disk until each run reads it (`SpilledBatches`); a caller's arrays stay as they are (the
    caller holds them anyway)."""
    if data is None:
        yield None
    elif isinstance(data, Mapping):
        yield calibration_batches(model, data)
    else:
        spilled = SpilledBatches(calibration_batches(model, data))
        try:
            yield spilled
        finally:
            spilled.close()
