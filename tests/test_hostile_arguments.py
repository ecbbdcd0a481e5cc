"""Hostile family: arguments. An output is never an input or another output of the same command, never a
folder; odd values are refused with one line (exit 2) instead of being silently replaced or run unbounded."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import assert_refused, cli, fixture_path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    shutil.copy(fixture_path("plain_cnn"), path)
    return path


def test_analyze_csv_twin_never_overwrites_the_input(tmp_path: Path) -> None:
    source = tmp_path / "model.csv"  # an ONNX model with an unusual name
    shutil.copy(fixture_path("plain_cnn"), source)
    before = source.read_bytes()
    assert_refused(cli("analyze", source, "-o", tmp_path / "model.json", "--cache", tmp_path / "c"),
                   "overwrite the input")
    assert source.read_bytes() == before
    assert not (tmp_path / "model.json").exists()


def test_output_equal_to_plan_out_is_refused(model: Path, tmp_path: Path) -> None:
    assert_refused(cli("prune", model, "--ratio", "0.3", "-o", tmp_path / "same.onnx",
                       "--plan-out", tmp_path / "same.onnx"), "written twice")
    assert not (tmp_path / "same.onnx").exists()


@pytest.mark.parametrize("link", ["symlink", "hardlink", "dotted"])
def test_output_that_is_the_input_by_another_name(model: Path, tmp_path: Path, link: str) -> None:
    before = model.read_bytes()
    other = tmp_path / "other.onnx"
    if link == "symlink":
        other.symlink_to(model)
    elif link == "hardlink":
        os.link(model, other)
    else:
        other = tmp_path / "." / "sub" / ".." / "model.onnx"
        (tmp_path / "sub").mkdir()
    assert_refused(cli("prune", model, "--ratio", "0.3", "-o", other), "overwrite the input")
    assert model.read_bytes() == before


def test_output_that_is_the_spec_is_refused(model: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text("{}")
    assert_refused(cli("prune", model, "--spec", spec, "-o", spec), "overwrite the input")
    assert spec.read_text() == "{}"


def test_output_that_is_a_folder_is_refused(model: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    assert_refused(cli("prune", model, "--ratio", "0.3", "-o", tmp_path / "out"), "is a folder")
    assert_refused(cli("transform", model, "-o", tmp_path / "out"), "is a folder")


def test_output_below_a_file_is_refused(model: Path, tmp_path: Path) -> None:
    assert_refused(cli("prune", model, "--ratio", "0.3", "-o", model / "x.onnx"), "is a file")


def test_spec_that_is_a_folder_is_refused(model: Path, tmp_path: Path) -> None:
    assert_refused(cli("prune", model, "--spec", tmp_path, "-o", tmp_path / "o.onnx"), "not a regular file")


def test_empty_ratios_are_refused_not_replaced_by_defaults(model: Path, tmp_path: Path) -> None:
    assert_refused(cli("analyze", model, "--ratios", "", "--cache", tmp_path / "c"), "--ratios is empty")


def test_labels_outside_the_models_classes_are_refused(tmp_path: Path) -> None:
    import numpy as np

    data = tmp_path / "d.npz"
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    np.savez(data, input=x, labels=np.full(8, 1000, dtype=np.int64))
    result = cli("analyze", fixture_path("digits_cnn"), "--data", data, "--ratios", "0.5", "--cache", tmp_path / "c")
    assert_refused(result, "labels run from 1000 to 1000", "10 classes")


def test_a_schedule_with_too_many_rounds_is_refused(tmp_path: Path) -> None:
    from onnxprune.errors import OnnxPruneError
    from onnxprune.loop.config import Schedule

    with pytest.raises(OnnxPruneError, match="1000000000 rounds"):
        Schedule(target=0.5, step=5e-10).check()  # used to build a list of 10**9 ratios
