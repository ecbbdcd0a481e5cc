"""Hostile family: the analysis cache. Only a regular file of bounded size is read; special files are
refused at once (no hang, no memory growth); deep or huge JSON starts over; concurrent runs never fail on
each other's temp files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from onnxprune.analysis import cache as cache_module
from onnxprune.analysis.cache import AnalysisCache
from onnxprune.atomic import atomic_writer
from onnxprune.errors import OnnxPruneError
from tests.conftest import assert_refused, cli, fixture_path

KEY = "k" * 64


def cache_file(folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    return folder / f"{KEY}.json"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "folder"])
def test_special_cache_files_are_refused_at_once(tmp_path: Path, kind: str) -> None:
    path = cache_file(tmp_path / "c")
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    with pytest.raises(OnnxPruneError, match="not a regular file"):
        AnalysisCache.open(tmp_path / "c", KEY, {})


def test_cache_folder_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("x")
    with pytest.raises(OnnxPruneError, match="not a folder"):
        AnalysisCache.open(tmp_path / "c", KEY, {})


def test_deeply_nested_json_starts_over(tmp_path: Path) -> None:
    cache_file(tmp_path / "c").write_text("[" * 100_000 + "]" * 100_000)
    cache, warning = AnalysisCache.open(tmp_path / "c", KEY, {})
    assert cache.entries == {} and warning and "nested too deeply" in warning


def test_oversized_cache_starts_over(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "MAX_JSON_BYTES", 100)
    cache_file(tmp_path / "c").write_text(" " * 101)
    cache, warning = AnalysisCache.open(tmp_path / "c", KEY, {})
    assert cache.entries == {} and warning and "larger than" in warning


def test_a_second_run_does_not_remove_the_first_runs_temp_file(tmp_path: Path) -> None:
    """Two analyze runs on one cache folder: opening the cache must not delete a live writer's temp."""
    path = cache_file(tmp_path / "c")
    with atomic_writer(path) as handle:  # the first run, mid-write
        handle.write(b"{}")
        second, _ = AnalysisCache.open(tmp_path / "c", KEY, {})
        second.put("g", "0.5", 0.9, "abc")
    assert path.read_bytes() == b"{}"  # the first run's rename succeeded; the last writer wins


def test_analyze_with_a_cache_that_is_a_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "c").write_text("not a folder")
    assert_refused(cli("analyze", fixture_path("plain_cnn"), "--ratios", "0.5", "--cache", tmp_path / "c"),
                   "not a folder")
