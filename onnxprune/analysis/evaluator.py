"""Evaluate sensitivity entries: the part of analysis that runs models, in whatever process it lives in.

A `Payload` (the model's bytes, the metric with its data, session settings) is built once by `analysis`
and sent to each worker once; a `Job` is one group's entries. For a job the worker cuts the model where
the group's change enters it (`split`), runs the prefix once per batch and keeps its outputs while they
fit in `prefix_budget`, and runs only the suffix for each entry. In mask mode one suffix session serves
the whole job; in weights mode (groups whose producers are not known to output exact zeros) each entry
gets a session with its zeroed weights.

What runs is counted in units of one evaluation of the whole model on the whole data (`Payload.shares`:
each node's share of the model's MACs; a run of nodes on n samples costs their share times n / N), so
the cost of an analysis can be compared across machines and loads. A job may stop early: after an entry
whose metric falls below `Job.stop_below` (the rest of the row is not needed, see `adaptive`), and each
entry after as few batches as its `StopRule` allows (`sequential`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.analysis.metrics import PER_SAMPLE, RELATIVE, Metric, feeds_digest
from onnxprune.analysis.sequential import StopRule, Tally, estimate
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.runtime import session
from onnxprune.graph.split import MaskPoint, Split, split

DEFAULT_PREFIX_BUDGET = 1 << 30  # bytes of prefix outputs kept per group (per worker process)


@dataclass
class Payload:
    """What every worker needs, built once; `key` identifies it (the cache key)."""

    key: str
    model: bytes
    metric: Metric
    providers: list[str] | None = None
    threads: int = 0  # onnxruntime intra-op threads; 0 = its default
    prefix_budget: int = DEFAULT_PREFIX_BUDGET
    optimize: bool = True  # False for QDQ models: fused int8 kernels would round otherwise in every cut
    shares: dict[str, float] = field(default_factory=dict)  # node name -> its share of the model's MACs
    baseline: float | None = None  # the unpruned model's metric, once known (for early stops)


@dataclass
class Entry:
    """One ratio of a group: the zeroed indices at each mask point, or the group's zeroed weights."""

    ratio: str
    zeroed: list[np.ndarray] | None = None
    weights: dict[str, np.ndarray] | None = None
    prior: Tally | None = None  # the samples already measured: go on after them


@dataclass
class Job:
    """Entries of one group; mask mode when `points` is set, else weights mode over `weights`."""

    group: str
    entries: list[Entry]
    points: list[MaskPoint] = field(default_factory=list)
    weights: list[str] = field(default_factory=list)
    stop_below: float | None = None  # stop after an entry whose metric is below this (entries in ratio order)
    rule: StopRule | None = None  # stop each entry early (metrics with per-sample values only)
    batches: int | None = None  # run each entry on this many more batches only (after its `prior`)


@dataclass
class Result:
    """One measured entry: its metric (None when not finite), the samples it saw, what it cost (in
    evaluations of the whole model on the whole data; None when the data's size is unknown)."""

    group: str
    ratio: str
    value: float | None
    samples: int | None = None
    cost: float | None = None
    tally: Tally | None = None  # the samples' losses so far, when the entry may go on later


class Evaluator:
    """Runs baselines and jobs for one payload; keep one per process.

    The prefix outputs of the last job stay at hand: the next job's prefix starts from them (only the
    part of the network between the two cuts runs), so a pass over all groups costs about one forward
    pass of prefixes instead of one per group.
    """

    def __init__(self, payload: Payload):
        self.payload = payload
        self.proto = onnx.load_from_string(payload.model)
        self.outputs = [o.name for o in self.proto.graph.output]
        self.previous: dict[object, dict[str, np.ndarray]] = {}
        data = getattr(payload.metric, "data", None)
        self.meter = Meter(payload.shares, data.samples if data is not None and payload.shares else None)

    def session(self, model: onnx.ModelProto | bytes) -> ort.InferenceSession:
        return session(model, self.payload.providers, self.payload.threads, optimize=self.payload.optimize)

    def baseline(self) -> float:
        """The unpruned model's metric; for fidelity and agreement, record the reference outputs (1 by
        definition), for top-1 the per-sample hits (what early-stopped entries are compared with)."""
        runner = FullRunner(self.session(self.payload.model), self.meter)
        metric = self.payload.metric
        if isinstance(metric, RELATIVE):
            metric.record(runner)
            value = 1.0
        else:
            value = metric.record(runner) if isinstance(metric, PER_SAMPLE) else metric(runner)
        self.payload.baseline = value
        return value

    def run(self, job: Job) -> Iterator[Result]:
        cut = split(self.proto, masks=job.points, weights=set(job.weights))
        prefix = _Prefix(cut, self.session, self.previous, self.payload.prefix_budget, self.meter)
        suffix_share = sum(self.payload.shares.get(name, 0.0) for name in cut.suffix_nodes())
        shared: list[ort.InferenceSession] = []

        def masked_suffix(dtypes: dict[str, np.dtype]) -> ort.InferenceSession:
            if not shared:
                shared.append(self.session(cut.suffix(dtypes)))
            return shared[0]

        for entry in job.entries:
            if job.points:
                masks = {name: point.mask(z) for (name, point), z in zip(cut.masks.items(), entry.zeroed)}
                runner = SplitRunner(cut, prefix, masked_suffix, masks, self.outputs, suffix_share)
            else:
                def own_suffix(dtypes: dict[str, np.dtype], weights=entry.weights) -> ort.InferenceSession:
                    return self.session(cut.suffix(dtypes, weights))

                runner = SplitRunner(cut, prefix, own_suffix, {}, self.outputs, suffix_share)
            result = self._measure(job, entry, runner)
            yield result
            if job.stop_below is not None and (result.value is None or result.value < job.stop_below):
                break
        self.previous = prefix.kept

    def _measure(self, job: Job, entry: Entry, runner: SplitRunner) -> Result:
        """One entry's metric (estimated from the first batches where the job's rule allows, or going on
        by `job.batches` after `entry.prior`), its samples and its cost."""
        metric, before = self.payload.metric, self.meter.spent
        tally = None
        if (job.rule is not None or job.batches is not None) and isinstance(metric, PER_SAMPLE) \
                and self.payload.baseline is not None:
            value, tally = estimate(metric, runner, self.payload.baseline, job.rule, entry.prior, job.batches)
            samples = tally.n
        else:
            value, samples = metric(runner), self.meter.samples
        finite = value if value is not None and math.isfinite(value) else None
        cost = self.meter.spent - before if self.meter.samples else None
        return Result(job.group, entry.ratio, finite, samples, cost, tally)


@dataclass
class Meter:
    """What ran, in evaluations of the whole model on all `samples` (None: unknown, nothing counted)."""

    shares: dict[str, float]
    samples: int | None
    spent: float = 0.0

    def add(self, share: float, count: int) -> None:
        """Nodes worth `share` of the model's MACs ran on `count` samples."""
        if self.samples:
            self.spent += share * count / self.samples

    def share(self, model: onnx.ModelProto) -> float:
        return sum(self.shares.get(node.name, 0.0) for node in model.graph.node)


class FullRunner:
    """Runs a whole model."""

    def __init__(self, sess: ort.InferenceSession, meter: Meter | None = None):
        self.sess = sess
        self.names = [o.name for o in sess.get_outputs()]
        self.meter = meter

    def __call__(self, feeds: Mapping[str, np.ndarray], key: object = None) -> dict[str, np.ndarray]:
        check_feeds(feeds, [i.name for i in self.sess.get_inputs()])
        if self.meter is not None:
            self.meter.add(1.0, _count(feeds))
        return dict(zip(self.names, self.sess.run(None, dict(feeds))))


def _count(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in a batch (axis 0 of its first input)."""
    first = next(iter(feeds.values()), None)
    return len(first) if first is not None and np.ndim(first) else 1


def check_feeds(feeds: Mapping[str, np.ndarray], inputs: list[str]) -> None:
    """A user's `run(feeds)` must name exactly the model's inputs."""
    if set(feeds) != set(inputs):
        raise OnnxPruneError(f"run() was given inputs {sorted(feeds)}; the model's inputs are {inputs}")


class _Prefix:
    """The cut tensors of each batch: computed once, kept while they fit in the budget.

    A batch whose earlier-cut tensors are in `known` (the previous job's) runs only the part of the
    network between the cuts; any other batch runs the whole prefix.
    """

    def __init__(self, cut: Split, make: Callable[[onnx.ModelProto], ort.InferenceSession],
                 known: dict[object, dict[str, np.ndarray]], budget: int, meter: Meter):
        self.cut = cut
        self.make = make
        self.known = known
        self.meter = meter
        self.sessions: dict[bool, tuple[ort.InferenceSession, float] | None] = {}
        self.kept: dict[object, dict[str, np.ndarray]] = {}
        self.budget = budget
        self.used = 0

    def values(self, feeds: Mapping[str, np.ndarray], key: object) -> dict[str, np.ndarray]:
        computed = self.kept.get(key)
        if computed is None:
            given = self.known.get(key, {})
            computed = {name: given[name] for name in self.cut.prefix_outputs() if name in given}
            made = self._session(given)
            if made is not None:
                sess, share = made
                self.meter.add(share, _count(feeds))
                names = [o.name for o in sess.get_outputs()]
                available = {**given, **feeds}
                run = sess.run(names, {i.name: available[i.name] for i in sess.get_inputs()})
                computed.update(zip(names, run))
            size = sum(a.nbytes for a in computed.values())
            if self.used + size <= self.budget:
                self.kept[key] = computed
                self.used += size
        return {name: computed[name] if name in computed else feeds[name]
                for name in self.cut.cut + self.cut.passthrough}

    def _session(self, given: dict[str, np.ndarray]) -> tuple[ort.InferenceSession, float] | None:
        """The prefix session (from the graph inputs, or from the tensors `given`) and its share of MACs."""
        incremental = bool(given)
        if incremental not in self.sessions:
            model = self.cut.prefix({name: a.dtype for name, a in given.items()})
            self.sessions[incremental] = (self.make(model), self.meter.share(model)) if model is not None else None
        return self.sessions[incremental]


class SplitRunner:
    """Runs a model as prefix (cached) + suffix; what a metric sees is the whole model's outputs."""

    def __init__(self, cut: Split, prefix: _Prefix, suffix: Callable[[dict[str, np.dtype]], ort.InferenceSession],
                 masks: dict[str, np.ndarray], outputs: list[str], share: float = 0.0):
        self.cut = cut
        self.prefix = prefix
        self.share = share  # the suffix's share of the model's MACs
        self.make_suffix = suffix
        self.masks = masks
        self.outputs = outputs
        self.sess: ort.InferenceSession | None = None

    def __call__(self, feeds: Mapping[str, np.ndarray], key: object = None) -> dict[str, np.ndarray]:
        if key is None:
            check_feeds(feeds, self.cut.graph_inputs)
            key = feeds_digest(feeds)
        values = self.prefix.values(feeds, key)
        if self.sess is None:
            self.sess = self.make_suffix({name: values[name].dtype for name in self.cut.cut})
        self.prefix.meter.add(self.share, _count(feeds))
        results = dict(zip(self.cut.changed_outputs, self.sess.run(
            self.cut.changed_outputs, {**{n: values[n] for n in self.cut.cut}, **self.masks})))
        return {name: results[name] if name in results else values[name] for name in self.outputs}


# --- one evaluator per worker process (process pool, Ray) -----------------------------------------

_WORKER: dict[str, Evaluator] = {}


def worker_evaluator(key: str, load: Callable[[], Payload]) -> Evaluator:
    """The process's evaluator for payload `key`, built (by `load`) on first use only."""
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = Evaluator(load())
    return _WORKER[key]
