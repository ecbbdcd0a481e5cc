"""Run a model stage by stage over a whole calibration set, so that weights can change between stages.

Reconstruction fits one layer at a time in graph order, each on the activations the model computes
*with the layers before it already re-fitted*. Re-running the model from its inputs for every layer
would cost one forward pass per layer; instead `StagedRun` runs the nodes between two stops once per
batch and keeps only the tensors that cross the stop (for a ResNet one or two tensors), so the whole
walk costs about one forward pass. Kept tensors stay in memory up to a byte budget and go to a temporary
directory beyond it; each is dropped once its last reader has run. A run whose weights do not change
(the unpruned model) need not stop at every layer: `windows` cuts the layers into runs of a few, and
`advance` hands over the tensors a caller watches batch by batch without keeping them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph.model import Model
from onnxprune.graph.runtime import subgraph_session
from onnxprune.process import release_memory

Batches = list[dict[str, np.ndarray]]
T = TypeVar("T")


def sample_count(batches: Batches) -> int:
    """How many samples the batches hold in all."""
    return sum(len(next(iter(b.values()))) for b in batches)


def reads(node: gs.Node) -> list[gs.Tensor]:
    """Tensors a node reads: its inputs and the outer-scope tensors its subgraphs (If, Loop, Scan) use."""
    tensors = [t for t in node.inputs if t.name]
    for sub in node.subgraphs() if hasattr(node, "subgraphs") else []:
        made = {t.name for t in sub.inputs} | {o.name for n in sub.nodes for o in n.outputs}
        for inner in sub.nodes:
            tensors.extend(t for t in reads(inner) if t.name not in made and not isinstance(t, gs.Constant))
    return tensors


class ActivationStore:
    """Per-batch arrays by tensor name, in memory up to `budget` bytes and in a temporary folder beyond.

    The folder's files are reused: a dropped array's file takes the next one written (over its old bytes,
    which stay cached), since making a new file cost 4-8x as much per byte as writing over one here
    (0.46-2.1 s/GB against 0.24)."""

    def __init__(self, budget: int):
        self.budget = budget
        self.in_memory: dict[tuple[str, int], np.ndarray] = {}
        self.on_disk: dict[tuple[str, int], tuple[Path, np.dtype, tuple[int, ...]]] = {}
        self.free: list[Path] = []  # files whose arrays were dropped, to be written over
        self.used = 0
        self._folder: Path | None = None
        self._files = 0
        self.uncounted: set[str] = set()

    def put(self, name: str, batch: int, array: np.ndarray, counted: bool = True) -> None:
        """Keep `array`; `counted=False` for views of data held elsewhere anyway (the calibration inputs)."""
        key = (name, batch)
        if not counted:
            self.in_memory[key] = array
            self.uncounted.add(name)
            return
        if self.used + array.nbytes <= self.budget:
            self.in_memory[key] = array
            self.used += array.nbytes
            return
        path = self.free.pop() if self.free else self._new_file()
        with open(path, "r+b") as file:
            np.ascontiguousarray(array).tofile(file)
        self.on_disk[key] = (path, array.dtype, array.shape)

    def _new_file(self) -> Path:
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="onnxprune-activations-"))
        path = self._folder / f"{self._files}.bin"
        self._files += 1
        path.touch()
        return path

    def get(self, name: str, batch: int) -> np.ndarray:
        key = (name, batch)
        if key in self.in_memory:
            return self.in_memory[key]
        path, dtype, shape = self.on_disk[key]
        return np.fromfile(path, dtype=dtype, count=math.prod(shape)).reshape(shape)

    def drop(self, name: str, batches: int) -> None:
        for b in range(batches):
            self.drop_one(name, b)

    def drop_one(self, name: str, batch: int) -> None:
        array = self.in_memory.pop((name, batch), None)
        if array is not None and name not in self.uncounted:
            self.used -= array.nbytes
        kept = self.on_disk.pop((name, batch), None)
        if kept is not None:
            self.free.append(kept[0])

    def close(self) -> None:
        self.in_memory.clear()
        self.on_disk.clear()
        self.free.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def windows(items: list[T], size: Callable[[T], int], budget: int) -> list[list[T]]:
    """`items` cut, in order, into runs whose sizes add up to at most `budget` (a bigger item alone)."""
    runs: list[list[T]] = []
    used = budget + 1
    for item in items:
        if used + size(item) > budget:
            runs.append([])
            used = 0
        runs[-1].append(item)
        used += size(item)
    return runs


class StagedRun:
    """Walks `model`'s nodes in order over `batches`, stopping before any node you name.

    `weights` maps a weight's name to the values this run uses instead of the model's current ones (the
    unpruned model's, for the reference run); the model's own values are read when a stage is built, so
    weights changed between stops take effect in the stages after.

    Example:
        run = StagedRun(model, batches, budget)
        run.advance(position)               # nodes before `position` have run on every batch
        x = run.value("conv2_input", 0)     # batch 0 of a tensor read at or after `position`
    """

    def __init__(self, model: Model, batches: Batches, budget: int, providers: list[str] | None = None,
                 weights: dict[str, np.ndarray] | None = None, threads: int = 0):
        self.model = model
        self.nodes = model.graph.nodes
        self.batches = len(batches)
        self.providers = providers
        self.weights = weights if weights is not None else {}  # read at each stage: may change between stops
        self.threads = threads
        self.store = ActivationStore(budget)
        self.position = 0
        self.last_read: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for t in reads(node):
                self.last_read[t.name] = i
        for b, feeds in enumerate(batches):
            for name, array in feeds.items():
                if name in self.last_read:
                    self.store.put(name, b, array, counted=False)
        self.dtypes = {name: array.dtype for name, array in batches[0].items()} if batches else {}

    def value(self, name: str, batch: int) -> np.ndarray:
        return self.store.get(name, batch)

    def advance(self, stop: int, watch: Sequence[str] = (),
                on_batch: Callable[[int, dict[str, np.ndarray]], None] | None = None) -> None:
        """Run nodes [position, stop) on every batch; keep what nodes at or after `stop` read.

        `on_batch(b, values)` hears of each batch with the values of the `watch` tensors (made in this
        stage, or kept from before it): what a caller sums over the batches without keeping them."""
        stage = self.nodes[self.position:max(stop, self.position)]
        made = {o.name for n in stage for o in n.outputs}
        needed = [t for n in stage for t in reads(n) if t.name not in made and not isinstance(t, gs.Constant)]
        inputs = list(dict.fromkeys(t.name for t in needed))
        outputs = [name for name in dict.fromkeys(o.name for n in stage for o in n.outputs)
                   if self.last_read.get(name, -1) >= stop or name in watch]
        sess = None
        if outputs:
            sess = subgraph_session(stage, {n: self.dtypes[n] for n in inputs},
                                    {n: self.dtypes.get(n) for n in outputs}, self.model.skeleton,
                                    self.providers, self.weights, self.threads)
        if sess is not None or on_batch is not None:
            for b in range(self.batches):
                results = dict(zip(outputs, sess.run(outputs, {n: self.store.get(n, b) for n in inputs}))) \
                    if sess is not None else {}
                for name, array in results.items():
                    self.dtypes[name] = array.dtype
                    if self.last_read.get(name, -1) >= stop:
                        self.store.put(name, b, array)
                if on_batch is not None:
                    on_batch(b, {n: results[n] if n in results else self.store.get(n, b) for n in watch})
        del sess
        for name in inputs:
            if self.last_read.get(name, -1) < stop:
                self.store.drop(name, self.batches)
        self.position = max(stop, self.position)
        release_memory()  # the stage's per-batch tensors (`process`)

    def close(self) -> None:
        self.store.close()
