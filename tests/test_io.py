"""Loading: every opset from 11 to the newest, shape inference with its onnxruntime fallback, atomic saves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, version_converter

import onnxprune
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import from_proto
from onnxprune.graph.model import to_proto, with_weights
from onnxprune.graph.save import save
from tests.conftest import fixture_path, random_batch, relative_difference, run_model


@pytest.mark.parametrize("opset", [11, 17, 18, 21, onnx.defs.onnx_opset_version()])
def test_every_supported_opset(opset: int) -> None:
    if opset == 11:  # the converter cannot take BatchNormalization down: a fixture exported at 11
        proto = onnx.load(fixture_path("plain_cnn_opset11"))
    else:
        proto = version_converter.convert_version(onnx.load(fixture_path("residual")), opset)
    model = from_proto(proto)
    assert model.opset == opset
    result = onnxprune.prune(model, onnxprune.PruneOptions(ratio=0.4))
    assert result.difference is not None and result.difference <= 1e-4
    assert result.model.opset_import[0].version == opset


def test_opset_below_11_is_refused() -> None:
    proto = onnx.load(fixture_path("plain_cnn_opset11"))
    proto.opset_import[0].version = 9
    with pytest.raises(OnnxPruneError, match="opset 9 is older than 11"):
        from_proto(proto)


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
    model = from_proto(proto)
    assert model.shapes["b"] == (1, 8, 8, 8)  # only onnxruntime knows com.microsoft.Gelu
    group = next(g for g in onnxprune.find_groups(model) if g.channels == 8)
    assert not group.prunable and "no channel rule for Gelu" in group.reason


def test_weights_in_constant_nodes_and_behind_identity() -> None:
    for name in ("constant_weights", "identity_weights"):
        model = onnxprune.load(fixture_path(name))
        plain = onnxprune.load(fixture_path("plain_cnn"))
        assert [g.channels for g in onnxprune.find_groups(model)] == [g.channels for g in onnxprune.find_groups(plain)]
        x = {"input": random_batch([1, 3, 32, 32], 2)}
        assert relative_difference(run_model(fixture_path(name), x), run_model(with_weights(model), x)) == 0


def test_loading_does_not_change_the_caller_proto() -> None:
    proto = onnx.load(fixture_path("plain_cnn"))
    before = proto.SerializeToString()
    from_proto(proto)
    assert proto.SerializeToString() == before


def test_save_is_atomic(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old contents")
    proto = onnx.load(fixture_path("plain_cnn"))

    def broken(self):  # the serializer fails half-way
        raise MemoryError("simulated")

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", broken)
    with pytest.raises(MemoryError):
        save(proto, target)
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]
    save(proto, target)
    onnx.checker.check_model(onnx.load(target))


@pytest.mark.parametrize("axis,shape", [(2, (6, 1)), (-1, (2, 3)), (0, (1, 6)), (1, (2, 3)), (-2, (1, 6))])
def test_weight_behind_flatten_folds_to_the_onnx_shape(axis: int, shape: tuple[int, int]) -> None:
    """Flatten(axis) of a constant weight folds to [prod(dims before axis), prod(dims from axis)]; axis =
    rank gives [everything, 1] (not [1, everything]), and the folded graph computes what the model does."""
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) + 1
    nodes = [helper.make_node("Flatten", ["w"], ["wf"], axis=axis), helper.make_node("MatMul", ["x", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, shape[1]])],
                              [numpy_helper.from_array(weight, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = from_proto(proto, {"x": (2, shape[0])})
    assert next(n for n in model.graph.nodes if n.op == "MatMul").inputs[1].values.shape == shape
    x = {"x": random_batch([2, shape[0]], 2)}
    assert relative_difference(run_model(proto, x), run_model(to_proto(model.graph, model.skeleton), x)) == 0


@pytest.mark.parametrize("opset,keepdims,expected", [(17, 1, [[1, 3, 4, 4]]), (18, 1, [[1, 3, 4, 4]]),
                                                     (17, 0, [1, 3, 4, 4])])
def test_shape_values_reduce_prod_over_its_axes(opset: int, keepdims: int, expected: list) -> None:
    """ReduceProd of a [1, 4] shape tensor over axis 0 is that tensor (not the product of everything)."""
    import onnx_graphsurgeon as gs

    from onnxprune.graph.shapes import shape_values

    axes = [helper.make_tensor("axes", TensorProto.INT64, [1], [0])] if opset >= 18 else []
    attrs = {} if opset >= 18 else {"axes": [0]}
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "zero"], ["s2"]),
             helper.make_node("ReduceProd", ["s2", *(["axes"] if axes else [])], ["p"], keepdims=keepdims, **attrs)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("p", TensorProto.INT64, None)],
                              [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), *axes])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    values = shape_values(gs.import_onnx(proto), {"x": (1, 3, 4, 4)})
    assert values["p"].tolist() == expected
