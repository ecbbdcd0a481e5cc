"""What sensitivity analysis measures: the metric, built in or the user's, on a `data.Dataset`.

Data is an `.npz` (read without pickle) whose arrays are named after the model's inputs, N samples on
axis 0. The metric, higher is better:

- `top1` when the file has an integer array `labels`: the fraction of samples whose arg-max over axis 1
  of the first output equals the label (per pixel for [N, C, H, W] outputs and [N, H, W] labels).
- `fidelity` without labels: 1 - mean over samples of |y - y0| / |y0|, the relative L2 distance between
  the model's outputs y and the unpruned model's outputs y0 on the same sample (all outputs together).
  It tracks accuracy because a pruned model can only change a decision where its outputs move: a
  classifier's prediction flips only when the logits move by more than the sample's margin, so a small
  relative distance means the same predictions, and a growing one means more of them flip. Unlike top-1
  it is continuous, so a few hundred unlabeled samples already rank the groups, and it works for any
  head (detection, embeddings, regression).
- `agreement` (`--metric agreement`), also without labels: the fraction of predictions the unpruned model
  makes that the model still makes — the arg-max of the first output over its class axis (the last axis
  of [N, C] and [N, T, C] outputs, axis 1 of [N, C, H, W]), per sample and position. Where the decision
  is an arg-max (classifiers, CTC text recognizers) it follows the decisions only; fidelity also counts
  how sure the model is, which moves a lot on peaked softmax outputs while no decision changes.
- `--eval package.module:function` for anything else (mAP, WER, BLEU): the function is called as
  `function(run, data) -> float`, where `run(feeds)` takes a dict {input name: array} and returns a
  dict {output name: array}, and `data` holds every array of `--data` (an empty dict without it).
  Call `run` with the same batches in the same order every time: analysis reuses the unchanged part
  of the network for inputs it has seen. The module is imported like `python -m` would, so a module in
  the current directory works; with `--workers`/`--ray` it must be importable there too.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import numbers
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from onnxprune.data import Dataset
from onnxprune.errors import OnnxPruneError, OptionError


class Runner(Protocol):
    """Runs the model being evaluated; `key` names a batch the runner may have seen before."""

    def __call__(self, feeds: Mapping[str, np.ndarray], key: object = None) -> dict[str, np.ndarray]: ...


@dataclass
class Top1:
    """Fraction of samples whose arg-max over axis 1 of the first output equals `labels`."""

    data: Dataset
    reference: list[np.ndarray] = field(default_factory=list)  # per batch: the unpruned model's per-sample top-1
    name: str = "top1"
    discrete: bool = True  # per-sample values count decisions (see `sequential`)

    def record(self, run: Runner) -> float:
        """Keep the unpruned model's per-sample hits (what an early-stopped entry is compared with, sample
        by sample); returns its top-1."""
        self.reference = [self.per_sample(run, k, feeds) for k, feeds in self.data.batches()]
        return float(np.mean(np.concatenate(self.reference)))

    def __call__(self, run: Runner) -> float:
        return float(np.mean(np.concatenate([self.per_sample(run, k, feeds) for k, feeds in self.data.batches()])))

    def per_sample(self, run: Runner, k: int, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each sample's share of correct predictions (1 or 0; per pixel for segmentation maps)."""
        labels = self.data.labels
        scores = next(iter(run(feeds, key=k).values()))
        start = k * self.data.batch_size
        want = labels[start:start + len(scores)]
        if scores.ndim < 2 or scores.shape[:1] + scores.shape[2:] != want.shape:
            raise OnnxPruneError(f"top-1 needs the first output to be scores [N, classes, ...] matching labels "
                                 f"{list(want.shape)}; it is {list(scores.shape)} (use --eval for other tasks)")
        if want.size and (want.min() < 0 or want.max() >= scores.shape[1]):
            raise OnnxPruneError(f"labels run from {want.min()} to {want.max()}, but the model scores "
                                 f"{scores.shape[1]} classes (0 to {scores.shape[1] - 1}); top-1 would be "
                                 "meaningless")
        hits = scores.argmax(axis=1) == want
        return hits.reshape(len(hits), -1).mean(axis=1)

    def paired(self, k: int) -> np.ndarray:
        return self.reference[k]


@dataclass
class Fidelity:
    """1 - mean relative L2 distance of each sample's outputs to the unpruned model's (`reference`)."""

    data: Dataset
    reference: list[list[np.ndarray]] = field(default_factory=list)  # per batch, per output
    name: str = "fidelity"
    discrete: bool = False

    def record(self, run: Runner) -> None:
        """Take the reference outputs from the unpruned model."""
        self.reference = [list(run(feeds, key=k).values()) for k, feeds in self.data.batches()]

    def __call__(self, run: Runner) -> float:
        return float(np.mean(np.concatenate([self.per_sample(run, k, feeds) for k, feeds in self.data.batches()])))

    def per_sample(self, run: Runner, k: int, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """1 - each sample's relative distance to the reference."""
        outputs = list(run(feeds, key=k).values())
        return 1.0 - relative_distance(outputs, self.reference[k], len(next(iter(feeds.values()))))

    def paired(self, k: int) -> np.ndarray:
        return np.ones(len(self.reference[k][0]))


@dataclass
class Agreement:
    """Fraction of the unpruned model's arg-max predictions (first output, class axis `class_axis`) kept."""

    data: Dataset
    reference: list[np.ndarray] = field(default_factory=list)  # per batch: the unpruned predictions
    name: str = "agreement"
    discrete: bool = True  # per-sample values count decisions (see `sequential`)

    def record(self, run: Runner) -> None:
        self.reference = [predictions(next(iter(run(feeds, key=k).values()))) for k, feeds in self.data.batches()]

    def __call__(self, run: Runner) -> float:
        return float(np.mean(np.concatenate([self.per_sample(run, k, feeds) for k, feeds in self.data.batches()])))

    def per_sample(self, run: Runner, k: int, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Each sample's share of the unpruned predictions kept (every sample has as many positions)."""
        ours = predictions(next(iter(run(feeds, key=k).values())))
        same = ours == self.reference[k]
        return same.reshape(len(same), -1).mean(axis=1)

    def paired(self, k: int) -> np.ndarray:
        return np.ones(len(self.reference[k]))


def predictions(scores: np.ndarray) -> np.ndarray:
    """Arg-max over the class axis: the last of [N, C] and [N, T, C], axis 1 of [N, C, H, W, ...]."""
    if scores.ndim < 2:
        raise OnnxPruneError(f"agreement needs scores [N, classes, ...] as the first output; it is {list(scores.shape)}"
                             " (use --eval for this model)")
    return scores.argmax(axis=-1 if scores.ndim <= 3 else 1)


def relative_distance(outputs: list[np.ndarray], reference: list[np.ndarray], n: int) -> np.ndarray:
    """Per sample: |y - y0| / |y0| over all outputs together (|y - y0| where y0 is all zero)."""
    diff = np.zeros(n)
    norm = np.zeros(n)
    for y, y0 in zip(outputs, reference):
        if y0.ndim == 0 or y0.shape[0] != n:
            raise OnnxPruneError(f"fidelity needs every output to have the batch on axis 0; an output has shape "
                                 f"{list(y0.shape)} (use --eval for this model)")
        a, b = y.reshape(n, -1).astype(np.float64), y0.reshape(n, -1).astype(np.float64)
        diff += np.sum((a - b) ** 2, axis=1)
        norm += np.sum(b**2, axis=1)
    return np.sqrt(diff) / np.where(norm > 0, np.sqrt(norm), 1.0)


@dataclass
class UserEval:
    """`function(run, data) -> float` named by `spec` ("package.module:function"); higher is better."""

    spec: str
    data: Dataset | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"eval:{self.spec}"

    def __call__(self, run: Runner) -> float:
        fn = load_eval(self.spec)
        arrays = self.data.arrays() if self.data is not None else {}
        value = fn(lambda feeds: run(feeds, key=None), arrays)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise OptionError(f"{{eval}} {self.spec} returned {type(value).__name__}, not a number")
        return float(value)


Metric = Top1 | Fidelity | Agreement | UserEval
RELATIVE = (Fidelity, Agreement)  # measured against the unpruned model's outputs: baseline 1 by definition
PER_SAMPLE = (Top1, Fidelity, Agreement)  # a mean over samples: an entry can stop early (`sequential`)


def load_eval(spec: str) -> Callable:
    """Import `package.module:function`; the current directory is searched first, as `python -m` does."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".") + [attr]):
        raise OptionError(f"{{eval}} {spec!r}: expected package.module:function")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError(f"{{eval}} {spec}: cannot import {module_name!r} ({exc})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise OptionError(f"{{eval}} {spec}: {module_name} has no function {attr!r}")
    try:
        inspect.signature(fn).bind(None, None)
    except TypeError:
        raise OptionError(f"{{eval}} {spec}: the function must take (run, data)") from None
    except ValueError:
        pass  # builtins without a signature: trust them
    return fn


def eval_source_digest(spec: str) -> str:
    """A digest of the eval function's source file, so editing it invalidates cached results."""
    fn = load_eval(spec)
    try:
        source = Path(inspect.getsourcefile(fn) or "").read_bytes()
    except (OSError, TypeError):
        source = spec.encode()
    return hashlib.sha256(source).hexdigest()


def feeds_digest(feeds: Mapping[str, np.ndarray]) -> str:
    """Identifies a batch a user eval feeds, to reuse the unchanged part of the network."""
    h = hashlib.blake2b(digest_size=20)
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        h.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
        h.update(array.data)
    return h.hexdigest()
