"""Hostile family: external data may only come from regular files inside the model's folder, wherever the
tensor sits (top graph, If/Loop/Scan bodies at any depth, Constant attributes), and never from the cwd."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import assert_refused, cli, fixture_path


def external_tensor(name: str, location: str, values: np.ndarray) -> TensorProto:
    tensor = numpy_helper.from_array(values, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    set_external(tensor, location=location, offset="0", length=str(values.nbytes))
    return tensor


def set_external(tensor: TensorProto, **info: str) -> None:
    del tensor.external_data[:]
    for key, value in info.items():
        tensor.external_data.add(key=key, value=value)


def if_model(location: str, depth: int = 1) -> onnx.ModelProto:
    """y = x + c, where c is a Constant inside `depth` nested If bodies, stored in external `location`."""
    value = np.arange(4, dtype=np.float32)
    inner = helper.make_node("Constant", [], ["c0"], value=external_tensor("c", location, value))
    body = helper.make_graph([inner], "leaf", [], [helper.make_tensor_value_info("c0", TensorProto.FLOAT, [4])])
    for level in range(depth):
        out = f"c{level + 1}"
        node = helper.make_node("If", ["cond"], [out], then_branch=body, else_branch=body)
        body = helper.make_graph([node], f"b{level}", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, [4])])
    nodes = list(body.node) + [helper.make_node("Add", ["x", f"c{depth}"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array(True), "cond")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_model(folder: Path, location: str, depth: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    path.write_bytes(if_model(location, depth).SerializeToString())
    return path


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "a/../../outside.bin"])
def test_subgraph_location_outside_is_refused(tmp_path: Path, location: str, depth: int) -> None:
    (tmp_path / "outside.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = write_model(tmp_path / "model", location, depth)
    assert_refused(cli("inspect", path), "tensor 'c'", "outside the model folder")


def test_subgraph_symlink_leading_out_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = write_model(tmp_path / "model", "w.bin")
    (tmp_path / "model" / "w.bin").symlink_to(tmp_path / "outside.bin")
    assert_refused(cli("inspect", path), "leads outside the model folder")


def test_subgraph_file_only_in_cwd_is_not_read(tmp_path: Path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    monkeypatch.chdir(cwd)
    path = write_model(tmp_path / "model", "w.bin")
    assert_refused(cli("inspect", path), "'w.bin' not found beside the model")


def test_hardlinked_data_file_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = write_model(tmp_path / "model", "w.bin")
    os.link(tmp_path / "outside.bin", tmp_path / "model" / "w.bin")
    assert_refused(cli("inspect", path), "hard links")


def test_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    """A symlink that stays in the folder is fine: the loader reads the file it names."""
    from onnxprune.graph.load import read_proto
    folder = tmp_path / "model"
    path = write_model(folder, "link.bin")
    (folder / "data").mkdir()
    (folder / "data" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    (folder / "link.bin").symlink_to(folder / "data" / "w.bin")
    proto = read_proto(path)
    body = proto.graph.node[0].attribute[0].g
    assert numpy_helper.to_array(body.node[0].attribute[0].t).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("info", [{"offset": "8"}, {"length": "64"}, {"offset": "x"}])
def test_data_range_outside_the_file_is_refused(tmp_path: Path, info: dict) -> None:
    path = write_model(tmp_path / "model", "w.bin")
    (tmp_path / "model" / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    proto = onnx.load(path, load_external_data=False)
    tensor = proto.graph.node[0].attribute[0].g.node[0].attribute[0].t
    set_external(tensor, location="w.bin", **info)
    path.write_bytes(proto.SerializeToString())
    assert_refused(cli("inspect", path), "tensor 'c'")


def test_top_level_initializer_checked_by_the_same_function(tmp_path: Path) -> None:
    """The encryptor and the loader give the same refusal: one check for every reader."""
    proto = onnx.load(fixture_path("plain_cnn"))
    init = proto.graph.initializer[0]
    values = numpy_helper.to_array(init)
    init.CopyFrom(external_tensor(init.name, "../w.bin", values))
    path = tmp_path / "m" / "m.onnx"
    path.parent.mkdir()
    path.write_bytes(proto.SerializeToString())
    loaded = cli("inspect", path)
    encrypted = cli("encrypt", path, "-o", tmp_path / "m.enc", "--key-env", "NO_SUCH_KEY_VAR")
    assert_refused(loaded, "points outside the model folder")
    assert "points outside the model folder" in loaded[2]
    assert encrypted[0] == 2
