"""LSTM and GRU (issue 9, item 4): MACs counted, hidden units pruned exactly, odd activations refused."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

import onnxprune
from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.inspect import inspect_model
from onnxprune.pruning.prune import PruneOptions, make_plan
from onnxprune.pruning.surgery import slim, sparse
from tests.conftest import fixture_path, random_batch, relative_difference, run_model

GATES = {"lstm": 4, "gru": 3}


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_macs_are_counted(name: str) -> None:
    """Per step, W [1, G*H, I] and R [1, G*H, H] once each: T=6, H=32, layer 1 I=24, layer 2 I=32.
    Before: 0 (only the two Gemm/MatMul layers, 1.28K MACs, were counted)."""
    report = inspect_model(onnxprune.load(fixture_path(name)))
    rows = [r for r in report.layers if r.op == name.upper()]
    rows_h = GATES[name] * 32
    assert [r.macs for r in rows] == [6 * rows_h * (24 + 32), 6 * rows_h * (32 + 32)]
    assert [r.channels for r in rows] == [32, 32]
    assert report.macs == sum(r.macs for r in report.layers) > 6 * rows_h * 120


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_hidden_units_are_pruned_exactly(name: str) -> None:
    model = onnxprune.load(fixture_path(name))
    groups = {g.id: g for g in find_groups(model)}
    rnn = groups[f"/rnn/{name.upper()}"]
    assert rnn.prunable and rnn.channels == 32
    assert groups["/proj/MatMul"].prunable  # the layer feeding X loses features through W's input axis
    plan = make_plan(model, PruneOptions(spec={rnn.id: 0.25, "/proj/MatMul": 0.5}, round_to=1), list(groups.values()))
    sparse_model, slim_model = sparse(model, list(groups.values()), plan), slim(model, list(groups.values()), plan)
    onnx.checker.check_model(slim_model, full_check=True)
    layers = [n for n in slim_model.graph.node if n.op_type == name.upper()]
    weights = {t.name: t for t in slim_model.graph.initializer}
    for layer in layers:
        hidden = helper.get_attribute_value(next(a for a in layer.attribute if a.name == "hidden_size"))
        assert hidden == 24
        assert list(weights[layer.input[2]].dims) == [1, GATES[name] * 24, 24]
    assert list(weights[layers[0].input[1]].dims)[2] == 12
    for batch in (1, 3):
        x = {"input": random_batch([1, 6, 8], batch, seed=batch)}
        assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= 1e-5


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_an_activation_that_is_not_zero_at_zero_is_refused(name: str) -> None:
    """With a Sigmoid candidate function a zeroed unit is 0.5 at every step, not 0: refused, op named."""
    proto = onnx.load(fixture_path(name))
    layer = next(n for n in proto.graph.node if n.op_type == name.upper())
    functions = ["Sigmoid", "Sigmoid", "Tanh"] if name == "lstm" else ["Sigmoid", "Sigmoid"]
    layer.attribute.append(helper.make_attribute("activations", functions))
    groups = {g.id: g for g in find_groups(from_proto(proto))}
    rnn = groups[f"/rnn/{name.upper()}"]
    assert not rnn.prunable and name.upper() in rnn.reason and "Sigmoid" in rnn.reason


def test_a_run_time_initial_state_is_checked() -> None:
    """An initial state read from a model input may be nonzero for a removed unit: the group stops."""
    proto = onnx.load(fixture_path("gru"))
    layer = next(n for n in proto.graph.node if n.op_type == "GRU")
    proto.graph.input.append(helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, [1, 1, 32]))
    layer.input[5] = "h0"
    groups = {g.id: g for g in find_groups(from_proto(proto))}
    assert not groups["/rnn/GRU"].prunable and "model input" in groups["/rnn/GRU"].reason
