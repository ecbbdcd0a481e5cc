"""Where analysis jobs run: in this process, in a pool of local processes, or as Ray tasks on a cluster.

Every executor takes the same `Payload` and `Job`s and yields one `Result` per entry as soon as it is
known (so the cache and the progress bar advance entry by entry), in whatever order entries finish.
The numbers do not depend on the executor: every worker runs the same `Evaluator`.
The payload reaches each worker once — through process start-up for the pool, through Ray's object store
for Ray (a worker process keeps its evaluator between tasks).
"""

from __future__ import annotations

import importlib.util
import logging
import multiprocessing
import os
import queue
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from onnxprune.analysis.evaluator import Evaluator, Job, Payload, Result, worker_evaluator
from onnxprune.errors import OnnxPruneError, OptionError


class Executor(Protocol):
    def run(self, payload: Payload, jobs: list[Job]) -> Iterator[Result]: ...


@dataclass
class InProcess:
    """Runs jobs one after the other here; reuses an evaluator the caller already built."""

    evaluator: Evaluator | None = None

    def run(self, payload: Payload, jobs: list[Job]) -> Iterator[Result]:
        evaluator = self.evaluator if self.evaluator is not None and self.evaluator.payload is payload \
            else Evaluator(payload)
        for job in jobs:
            yield from evaluator.run(job)


@dataclass
class ProcessPool:
    """`workers` local processes, each with cpu_count / workers onnxruntime threads."""

    workers: int

    def run(self, payload: Payload, jobs: list[Job]) -> Iterator[Result]:
        context = multiprocessing.get_context("spawn")  # no fork: onnxruntime's threads do not survive it
        tasks, results = context.Queue(), context.Queue()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        shipped = replace(payload, threads=threads)
        for job in jobs:
            tasks.put(job)
        processes = [context.Process(target=_pool_worker, args=(shipped, tasks, results), daemon=True)
                     for _ in range(min(self.workers, len(jobs)))]
        for _ in processes:
            tasks.put(None)
        for process in processes:
            process.start()
        expected = sum(len(job.entries) for job in jobs)
        try:
            while expected:
                try:
                    message = results.get(timeout=0.5)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes):
                        raise RuntimeError("an analysis worker process died") from None
                    if all(p.exitcode is not None for p in processes) and results.empty():
                        raise RuntimeError("analysis workers exited before sending every result") from None
                    continue
                if message[0] == "error":
                    _raise_remote(message[1], message[2])
                if message[0] == "stopped":  # a job stopped early: its other entries will not come
                    expected -= message[1]
                    continue
                expected -= 1
                yield message[1]
        finally:
            for process in processes:
                if process.is_alive():
                    process.terminate()
            for process in processes:
                process.join()


def _pool_worker(payload: Payload, tasks, results) -> None:
    """Run jobs until the sentinel; stop as soon as the parent is gone (killed), instead of computing
    on for nobody. At exit the queue's feeder thread is joined, so no result is lost (a dead parent
    makes its writes fail rather than block)."""
    parent = multiprocessing.parent_process()
    evaluator = Evaluator(payload)
    while (job := tasks.get()) is not None:
        try:
            sent = 0
            for result in evaluator.run(job):
                if parent is not None and not parent.is_alive():
                    return
                results.put(("result", result))
                sent += 1
            if sent < len(job.entries):
                results.put(("stopped", len(job.entries) - sent))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
            results.put(("error", _kind(exc), _describe(exc)))
            return


def _kind(exc: BaseException) -> str:
    """"option" (an `OptionError`: its text keeps the field marks, for the CLI), "user", or "" (a bug)."""
    return "option" if isinstance(exc, OptionError) else "user" if isinstance(exc, OnnxPruneError) else ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OptionError):
        return exc.text
    if isinstance(exc, OnnxPruneError):
        return str(exc)
    return "".join(traceback.format_exception_only(type(exc), exc)).strip() + "\n" + traceback.format_exc()


def _raise_remote(kind: str, text: str) -> None:
    if kind == "option":
        raise OptionError(text)
    if kind:
        raise OnnxPruneError(text)
    raise RuntimeError(f"in an analysis worker: {text}")


@dataclass
class RayCluster:
    """Jobs as Ray tasks (one CPU each), the payload in Ray's object store.

    `address` is passed to `ray.init` ("auto", "ray://head:10001", "local" for a fresh local instance);
    None uses the Ray instance this process already started.
    """

    address: str | None = None

    def run(self, payload: Payload, jobs: list[Job]) -> Iterator[Result]:
        ray = require_ray()
        started = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
            started = True
        try:
            stored = ray.put(replace(payload, threads=1))
            task = ray.remote(num_cpus=1)(_ray_job)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            pending = [task.remote(payload.key, [stored], job) for job in split_jobs(jobs, cpus)]
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for generator in ready:
                    try:
                        ref = next(generator)
                    except StopIteration:
                        continue
                    yield _ray_get(ray, ref)
                    pending.append(generator)
        finally:
            if started:
                ray.shutdown()


def _ray_job(key: str, stored: list, job: Job) -> Iterator[Result]:
    """A Ray generator task: one result per entry. `stored` wraps the payload's reference, so it is
    fetched only by a worker process that has not built this payload's evaluator yet."""
    import ray

    evaluator = worker_evaluator(key, lambda: ray.get(stored[0]))
    yield from evaluator.run(job)


def _ray_get(ray, ref) -> Result:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, OptionError):
            raise OptionError(cause.text) from None
        if isinstance(cause, OnnxPruneError):
            raise OnnxPruneError(str(cause)) from None
        raise


def require_ray():
    """The ray module, or a clear message on how to get it."""
    if importlib.util.find_spec("ray") is None:
        raise OptionError("{ray} needs the ray package: pip install 'onnxprune[ray]'")
    import ray

    return ray


def make_executor(workers: int = 1, ray: str | None = None, evaluator: Evaluator | None = None) -> Executor:
    """In-process for one worker, a process pool for more, Ray when an address is given."""
    if ray is not None:
        return RayCluster(ray)
    if workers > 1:
        return ProcessPool(workers)
    return InProcess(evaluator)


def split_jobs(jobs: list[Job], workers: int) -> list[Job]:
    """Cut groups into chunks when there are fewer groups than workers, so every worker has work.

    A chunk recomputes its group's prefix, so groups are cut only as much as needed.
    """
    if workers <= 1 or len(jobs) >= workers:
        return jobs
    pieces = -(-workers // max(len(jobs), 1))
    chunks = []
    for job in jobs:
        n = min(pieces, len(job.entries))
        for k in range(n):
            chunks.append(replace(job, entries=job.entries[k::n]))
    return chunks
