"""Loading: every opset from 11 to the newest, shape inference with its onnxruntime fallback, atomic saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

import onnxprune
from onnxprune import io
from onnxprune.errors import OnnxPruneError
from tests.conftest import fixture_path, random_batch, relative_difference, run_model


@pytest.mark.parametrize("opset", [11, 17, 18, 21, onnx.defs.onnx_opset_version()])
def test_every_supported_opset(opset: int) -> None:
    if opset == 11:  # the converter cannot take BatchNormalization down: a fixture exported at 11
        proto = onnx.load(fixture_path("plain_cnn_opset11"))
    else:
        proto = version_converter.convert_version(onnx.load(fixture_path("residual")), opset)
    model = io.from_proto(proto)
    assert model.opset == opset
    result = onnxprune.prune(model, onnxprune.PruneOptions(ratio=0.4))
    assert result.difference is not None and result.difference <= 1e-4
    assert result.model.opset_import[0].version == opset


def test_opset_below_11_is_refused() -> None:
    proto = onnx.load(fixture_path("plain_cnn_opset11"))
    proto.opset_import[0].version = 9
    with pytest.raises(OnnxPruneError, match="opset 9 is older than 11"):
        io.from_proto(proto)


def test_shapes_fall_back_to_onnxruntime() -> None:
    """An operator ONNX's inference does not know (a contrib op): onnxruntime tells the shapes."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft"),
        helper.make_node("Conv", ["b", "w2"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 8, 8])], [w1, w2])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model = io.from_proto(proto)
    assert model.shapes["b"] == (1, 8, 8, 8)  # only onnxruntime knows com.microsoft.Gelu
    group = next(g for g in onnxprune.find_groups(model) if g.channels == 8)
    assert not group.prunable and "no channel rule for Gelu" in group.reason


def test_weights_in_constant_nodes_and_behind_identity() -> None:
    for name in ("constant_weights", "identity_weights"):
        model = onnxprune.load(fixture_path(name))
        plain = onnxprune.load(fixture_path("plain_cnn"))
        assert [g.channels for g in onnxprune.find_groups(model)] == [g.channels for g in onnxprune.find_groups(plain)]
        x = {"input": random_batch([1, 3, 32, 32], 2)}
        assert relative_difference(run_model(fixture_path(name), x), run_model(io.with_weights(model), x)) == 0


def test_loading_does_not_change_the_caller_proto() -> None:
    proto = onnx.load(fixture_path("plain_cnn"))
    before = proto.SerializeToString()
    io.from_proto(proto)
    assert proto.SerializeToString() == before


def test_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old contents")
    proto = onnx.load(fixture_path("plain_cnn"))

    def broken(self):  # the serializer fails half-way
        raise MemoryError("simulated")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", broken)
    with pytest.raises(MemoryError):
        io.save(proto, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    io.save(proto, target)
    onnx.checker.check_model(onnx.load(target))
