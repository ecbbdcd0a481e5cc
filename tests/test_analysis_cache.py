"""The analysis cache: resumes after SIGKILL without redoing an entry; never trusts a foreign or damaged file."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import onnxprune
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.cache import AnalysisCache, removal_digest
from tests.conftest import FIXTURES, ROOT, fixture_path

DIGITS = fixture_path("digits_cnn")
DIGITS_TEST = FIXTURES / "digits_test.npz"
COUNTER = "ONNXPRUNE_TEST_EVAL_COUNTER"


def slow_top1(run, data) -> float:
    """A user metric (top-1) that takes a while and counts its calls in the file named by $COUNTER."""
    time.sleep(0.04)
    with open(os.environ[COUNTER], "a") as log:
        log.write("call\n")
    scores = run({"input": data["input"]})["output"]
    return float(np.mean(scores.argmax(1) == data["labels"]))


def _entries(cache_dir: Path) -> int:
    files = list(cache_dir.glob("*.json"))
    if not files:
        return 0
    try:
        data = json.loads(files[0].read_text())
    except ValueError:
        return 0
    return sum(len(row) for row in data["entries"].values())


def _analyze_cmd(cache_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "onnxprune", "analyze", str(DIGITS), "--data", str(DIGITS_TEST),
            "--eval", "tests.test_analysis_cache:slow_top1", "--cache", str(cache_dir), "-o", str(out), "--exact"]


def test_sigkill_and_resume(tmp_path) -> None:
    """Kill twice at arbitrary points, run again: the table completes, and no finished entry (nor the
    baseline) is evaluated again."""
    cache_dir, out = tmp_path / "cache", tmp_path / "sens.json"
    env = {**os.environ, COUNTER: str(tmp_path / "calls.log")}
    finished = []
    for kill_after in (4, 14):
        process = subprocess.Popen(_analyze_cmd(cache_dir, out), cwd=ROOT, env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _entries(cache_dir) < kill_after and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished.append(_entries(cache_dir))  # what the cache holds after the kill: always valid JSON
    assert 4 <= finished[0] < finished[1] < 27, finished
    assert not out.exists()
    log = tmp_path / "calls.log"
    before = log.read_text().count("call")
    assert 2 <= before <= 1 + finished[1] + 2  # the baseline, the entries, at most one in flight per kill
    done = subprocess.run(_analyze_cmd(cache_dir, out), cwd=ROOT, env=env, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    summary = re.search(r"(\d+) entries evaluated, (\d+) from the cache", done.stderr)
    evaluated, cached = int(summary[1]), int(summary[2])
    assert cached == finished[1] and 1 <= evaluated <= 27 - finished[1]
    assert log.read_text().count("call") - before == evaluated  # only what was left; no baseline again
    resumed = json.loads(out.read_text())
    fresh = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=str(DIGITS_TEST), exact=True))
    assert resumed["groups"] == fresh.table.groups  # user top-1 == built-in top-1, entry by entry
    assert resumed["baseline"] == fresh.table.baseline


def _run(cache_dir: Path, data: Path = DIGITS_TEST, model: Path = DIGITS, **kwargs):
    options = AnalyzeOptions(data=str(data), ratios=[0.2, 0.6], cache_dir=cache_dir, exact=True, **kwargs)
    return analyze(onnxprune.load(model), options)


def test_resume_only_computes_new_entries(tmp_path) -> None:
    first = _run(tmp_path)
    assert (first.evaluated, first.cached) == (6, 0)
    more = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=str(DIGITS_TEST), ratios=[0.2, 0.4, 0.6],
                                                           cache_dir=tmp_path, exact=True))
    assert (more.evaluated, more.cached) == (3, 6)
    again = _run(tmp_path)
    assert (again.evaluated, again.cached) == (0, 6)
    assert again.table.groups == first.table.groups
    forced = _run(tmp_path, force=True)
    assert (forced.evaluated, forced.cached) == (6, 0)


def test_other_data_or_model_never_reuses_the_cache(tmp_path) -> None:
    _run(tmp_path)
    half = tmp_path / "half.npz"
    with np.load(DIGITS_TEST) as npz:
        np.savez(half, input=npz["input"][:200], labels=npz["labels"][:200])
    other_data = _run(tmp_path, data=half)
    assert other_data.evaluated == 6 and other_data.cached == 0
    other_settings = _run(tmp_path, criterion="l2")
    assert other_settings.evaluated == 6
    assert len(list(tmp_path.glob("*.json"))) == 3  # one file per (model, data, settings)


def test_an_entry_is_reused_only_for_the_same_channels(tmp_path) -> None:
    """If the channels an entry zeroes change (another criterion implementation, another alignment),
    its number is recomputed even though the file is valid and the key matches."""
    first = _run(tmp_path)
    cache, problem = AnalysisCache.open(tmp_path, first.cache_path.stem, {})
    assert problem is None and cache.baseline == first.table.baseline
    gid = next(iter(cache.entries))
    cache.entries[gid]["0.6"][1] = removal_digest([0, 1, 2])
    cache.save()
    again = _run(tmp_path)
    assert (again.evaluated, again.cached) == (1, 5)
    assert again.table.groups == first.table.groups


@pytest.mark.parametrize("damage", ["truncated", "edited", "foreign", "not_json", "wrong_types"])
def test_damaged_or_foreign_cache_is_rebuilt(tmp_path, damage: str) -> None:
    first = _run(tmp_path)
    path = first.cache_path
    data = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[: len(path.read_text()) // 2])
    elif damage == "edited":  # a plausible number, but not the one measured
        gid = next(iter(data["entries"]))
        data["entries"][gid]["0.2"] = 0.123
        path.write_text(json.dumps(data))
    elif damage == "foreign":  # another analysis' complete, valid file under this name
        other = tmp_path / "other"
        foreign = _run(other, criterion="l2").cache_path
        path.write_text(foreign.read_text())
    elif damage == "not_json":
        path.write_bytes(b"\x80\x04\x95 pickle-like bytes")
    else:
        data["entries"] = {"g": {"0.2": "high"}}
        path.write_text(json.dumps(data))
    warnings: list[str] = []
    again = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=str(DIGITS_TEST), ratios=[0.2, 0.6],
                                                            cache_dir=tmp_path, exact=True), warn=warnings.append)
    assert again.evaluated == 6 and again.cached == 0
    assert any("unusable" in w and "starting over" in w for w in warnings), warnings
    assert again.table.groups == first.table.groups
    assert json.loads(path.read_text())["checksum"]  # rewritten, valid again


def test_early_stopped_entries_keep_their_tally_and_resume_refined(tmp_path) -> None:
    """An adaptive run stores each early-stopped entry's tally (where it may go on); the same command again
    computes nothing and gives the same table; a malformed tally makes the file untrusted."""
    model = onnxprune.load(DIGITS)
    options = AnalyzeOptions(data=str(DIGITS_TEST), metric="agreement", plans=[0.3], cache_dir=tmp_path)
    first = analyze(model, options)
    path = next(tmp_path.glob("*.json"))
    entries = [e for row in json.loads(path.read_text())["entries"].values() for e in row.values()]
    tallies = [e[2] for e in entries if len(e) == 3]
    assert tallies and all(1 <= t[0] < 450 and t[0] % 8 == 0 for t in tallies)  # whole batches, not all samples
    assert any(len(e) == 2 for e in entries)  # refined to every sample, or the baseline: no tally
    again = analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric="agreement", plans=[0.3], cache_dir=tmp_path))
    assert again.evaluated == 0 and again.table.groups == first.table.groups
    data = json.loads(path.read_text())
    gid, ratio = next((g, r) for g, row in data["entries"].items() for r, e in row.items() if len(e) == 3)
    data["entries"][gid][ratio][2] = [0, 1.0, 1.0, 0]  # no samples
    body = {"key": data["key"], "baseline": data["baseline"], "entries": data["entries"]}
    data["checksum"] = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    path.write_text(json.dumps(data))
    warnings: list[str] = []
    analyze(model, AnalyzeOptions(data=str(DIGITS_TEST), metric="agreement", plans=[0.3], cache_dir=tmp_path),
            warn=warnings.append)
    assert any("unusable" in w for w in warnings), warnings
