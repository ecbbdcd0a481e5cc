"""The same table whichever executor runs it: in this process, a process pool, or Ray tasks."""

from __future__ import annotations

import pytest

import onnxprune
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.evaluator import Entry, Job
from onnxprune.analysis.executors import split_jobs
from onnxprune.errors import OnnxPruneError, OptionError
from tests.conftest import FIXTURES, fixture_path

DIGITS = fixture_path("digits_cnn")
DIGITS_TEST = str(FIXTURES / "digits_test.npz")
RATIOS = [0.25, 0.5, 0.75]


@pytest.fixture(scope="module")
def in_process():
    return analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=DIGITS_TEST, ratios=RATIOS))


def test_process_pool_gives_the_same_table(in_process, tmp_path) -> None:
    pooled = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=DIGITS_TEST, ratios=RATIOS, workers=2,
                                                            cache_dir=tmp_path))
    assert pooled.evaluated == in_process.evaluated  # adaptive: jobs stop in the workers as they do here
    assert pooled.table.groups == in_process.table.groups and pooled.table.worse_than == in_process.table.worse_than


def test_process_pool_reports_a_users_error(tmp_path) -> None:
    with pytest.raises(OnnxPruneError, match="returned str, not a number") as caught:
        analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=DIGITS_TEST, ratios=[0.5], workers=2,
                                                       eval="tests.test_analysis_executors:late_text_eval"))
    assert isinstance(caught.value, OptionError)  # still names its option: the CLI says --eval
    assert caught.value.say(lambda name: f"--{name}").startswith("--eval tests.test_analysis_executors:")


def late_text_eval(run, data):
    """A number for the baseline (first call in the parent), text in the workers."""
    import multiprocessing

    return 1.0 if multiprocessing.parent_process() is None else "text"


def test_ray_gives_the_same_table(in_process, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        remote = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=DIGITS_TEST, ratios=RATIOS, ray="auto",
                                                                cache_dir=tmp_path))
    finally:
        ray.shutdown()
    assert remote.evaluated == in_process.evaluated
    assert remote.table.groups == in_process.table.groups and remote.table.worse_than == in_process.table.worse_than


def test_split_jobs_gives_every_worker_work() -> None:
    jobs = [Job("a", [Entry(str(k)) for k in range(9)]), Job("b", [Entry("1")])]
    assert split_jobs(jobs, 1) == jobs
    chunks = split_jobs(jobs, 4)
    assert len(chunks) == 3  # "a" in two chunks, "b" has one entry
    assert sorted(e.ratio for c in chunks if c.group == "a" for e in c.entries) == [str(k) for k in range(9)]
