"""The command line behaves like its neighbours (onnxsim, onnxslim, polygraphy): one test per surprise a
new user met (issue 12), each of which failed before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxprune import __version__
from onnxprune.cli import main
from tests.conftest import fixture_path

MODEL = str(fixture_path("plain_cnn"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("onnxprune: error: "), err
    return err


def test_version(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"onnxprune {__version__}"


@pytest.mark.parametrize("argv", [["--debug", "inspect", MODEL], ["inspect", MODEL, "--debug"]])
def test_debug_before_or_after_the_verb(argv, capsys) -> None:
    assert main(argv) == 0
    assert "total:" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["prune", MODEL, "--ratio", "abc", "-o", "x.onnx"],
                                  ["prune", MODEL, "-o", "x.onnx"], [], ["inspect"]])
def test_usage_errors_are_one_line(argv, capsys) -> None:
    assert main(argv) == 2
    _one_line_error(capsys)


def test_outputs_honour_the_umask_and_keys_stay_private(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["prune", MODEL, "--ratio", "0.3", "-o", str(tmp_path / "slim.onnx")]) == 0
        assert main(["keygen", "-o", str(tmp_path / "k.key")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "slim.onnx").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "k.key").stat().st_mode & 0o777 == 0o600


def test_output_into_a_missing_folder_is_refused(tmp_path, capsys) -> None:
    assert main(["prune", MODEL, "--ratio", "0.3", "-o", str(tmp_path / "typo" / "slim.onnx")]) == 2
    assert "does not exist" in _one_line_error(capsys)
    assert not (tmp_path / "typo").exists()


def test_a_closed_pipe_ends_quietly() -> None:
    """`onnxprune inspect --json | head -c 1`: the reader leaves early; no traceback, no 'internal error'."""
    process = subprocess.Popen([sys.executable, "-m", "onnxprune", "inspect", MODEL, "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    process.stdout.read(1)
    process.stdout.close()
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0 and err == b"", err


def test_exclude_takes_one_pattern_and_warns_when_it_matches_nothing(tmp_path, capsys) -> None:
    out = str(tmp_path / "slim.onnx")
    assert main(["prune", "--exclude", "no_such_layer*", MODEL, "--ratio", "0.3", "-o", out]) == 0  # MODEL stays positional
    assert "exclude pattern 'no_such_layer*' matches no node name" in capsys.readouterr().err


def test_a_sensitivity_table_given_as_spec_says_use_sens(tmp_path, capsys) -> None:
    table = tmp_path / "sens.json"
    table.write_text(json.dumps({"metric": "fidelity", "baseline": 1.0, "groups": {"conv1": {"0.1": 0.99}}}))
    assert main(["prune", MODEL, "--spec", str(table), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "--sens" in _one_line_error(capsys)


def test_a_json_file_given_as_model_is_bad_input(tmp_path, capsys) -> None:
    path = tmp_path / "sens.json"
    path.write_text(json.dumps({"metric": "fidelity"}))
    assert main(["inspect", str(path)]) == 2
    assert "not an ONNX model" in _one_line_error(capsys)


def test_transform_of_a_model_with_nothing_zeroed_says_why(tmp_path, capsys) -> None:
    assert main(["transform", MODEL, "-o", str(tmp_path / "dense.onnx")]) == 0
    assert "no channel of this model is all zero" in capsys.readouterr().err
    assert Path(tmp_path / "dense.onnx").exists()


def test_inspect_says_how_much_can_shrink_and_what_blocks_the_rest(tmp_path, capsys) -> None:
    """x -> conv1 -> Relu -> conv2 -> y: conv1's outputs can shrink, its inputs (the model input) cannot;
    conv2 reads the shrinkable channels and writes the model output: half of each layer, 50% in all."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")])
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shrinkable_macs"] == pytest.approx(0.5) and report["shrinkable_params"] == pytest.approx(0.5)
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "can shrink: 50% of the weighted layers' MACs, 50% of their params" in text
    assert "blocked, " in text and "is a model output" in text
