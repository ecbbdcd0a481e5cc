"""Quantized models (issue 9, item 3): a QDQ model has its float twin's groups and costs, a pruned QDQ
model is a QDQ model with the same quantization, and QOperator layers are counted but refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.inspect import inspect_model
from onnxprune.pruning.prune import PruneOptions, make_plan, prune
from onnxprune.pruning.surgery import slim, sparse
from onnxprune.recover.resolve import resolved_readers
from tests.conftest import fixture_path, random_batch, relative_difference, run_model
from tools.quantized_fixtures import quantize

QDQ = ["qdq_residual", "qdq_residual_per_channel"]


@pytest.mark.parametrize("name", QDQ)
def test_a_qdq_model_has_the_groups_and_costs_of_its_float_twin(name: str) -> None:
    """Before: 0 groups, no reason, 464 params (the float BatchNorm terms and scales only)."""
    twin, quantized = onnxprune.load(fixture_path("residual")), onnxprune.load(fixture_path(name))
    reports = [inspect_model(m) for m in (twin, quantized)]
    rows = [[(g.id, g.channels, g.prunable, g.reason, r.group_macs[g.id]) for g in r.groups] for r in reports]
    assert rows[0] == rows[1] and sum(g.prunable for g in reports[1].groups) == 5
    assert reports[1].macs == reports[0].macs
    assert reports[1].params == reports[0].params  # the int8 weights count, the activations' scales do not
    shares = [r.shrinkable_macs for r in reports]  # inspect's two-sided shrinkable share
    assert shares[1] == pytest.approx(shares[0]) and shares[0] > 0.9


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _weight_dq(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Per Conv/Gemm, the DequantizeLinear that makes its weight."""
    made = {o: n for n in model.graph.node for o in n.output}
    return {n.name: made[n.input[1]] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


@pytest.mark.parametrize("name", QDQ)
def test_a_pruned_qdq_model_stays_qdq_with_the_same_quantization(name: str) -> None:
    model = onnxprune.load(fixture_path(name))
    groups = find_groups(model)
    plan = make_plan(model, PruneOptions(ratio=0.4), groups)
    original, slim_model = onnx.load(fixture_path(name)), slim(model, groups, plan)
    onnx.checker.check_model(slim_model, full_check=True)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)
    for op in ("QuantizeLinear", "DequantizeLinear", "Conv"):
        assert count(slim_model, op) == count(original, op), op
    before, after = _initializers(original), _initializers(slim_model)
    for layer, dq in _weight_dq(slim_model).items():
        ints, scale = after[dq.input[0]], after[dq.input[1]]
        assert ints.dtype == np.int8, layer
        old_ints, old_scale = before[_weight_dq(original)[layer].input[0]], before[_weight_dq(original)[layer].input[1]]
        assert ints.shape[0] <= old_ints.shape[0], layer
        if "per_channel" in name:  # one scale per kept output channel, each the original one
            assert scale.shape == (ints.shape[0],) and np.isin(scale, old_scale).all(), layer
        else:
            assert scale.shape == old_scale.shape and scale == old_scale, layer
    assert any(after[dq.input[0]].shape != before[_weight_dq(original)[k].input[0]].shape
               for k, dq in _weight_dq(slim_model).items())


def _stem_pruned(make) -> tuple[dict, dict, np.ndarray]:
    """The per-channel QDQ fixture's initializers before and after `make` (sparse or slim) at half the
    channels, and the stem conv's removed channels."""
    name = "qdq_residual_per_channel"
    model = onnxprune.load(fixture_path(name))
    groups = find_groups(model)
    plan = make_plan(model, PruneOptions(ratio=0.5, round_to=1), groups)
    before, after = _initializers(onnx.load(fixture_path(name))), _initializers(make(model, groups, plan))
    return before, after, plan.groups["/stem/stem.0/Conv"].removed


def test_slim_integers_are_the_original_integers_of_the_kept_channels() -> None:
    """Requantizing the lifted floats gives back exactly the integers of every kept channel."""
    before, after, removed = _stem_pruned(slim)
    stem = "stem.0.weight_quantized"
    kept = np.setdiff1d(np.arange(before[stem].shape[0]), removed)
    assert np.array_equal(after[stem], before[stem][kept])
    assert np.array_equal(after["stem.0.weight_scale"], before["stem.0.weight_scale"][kept])


def test_sparse_sets_the_removed_integers_to_the_zero_point() -> None:
    before, after, removed = _stem_pruned(sparse)
    assert set(after) == set(before)
    stem, point = after["stem.0.weight_quantized"], after["stem.0.weight_zero_point"]
    assert np.all(stem[removed] == point[removed, None, None, None])
    kept = np.setdiff1d(np.arange(stem.shape[0]), removed)
    assert np.array_equal(stem[kept], before["stem.0.weight_quantized"][kept])


@pytest.mark.parametrize("name", QDQ)
def test_fused_int8_kernels_differ_by_at_most_one_output_step(name: str) -> None:
    """onnxruntime's extended optimizations run QDQ models with fused int8 kernels, which round by up to
    one output quantization step otherwise than the QDQ definition, in the unpruned model too."""
    model = onnxprune.load(fixture_path(name))
    groups = find_groups(model)
    plan = make_plan(model, PruneOptions(ratio=0.4), groups)
    step = float(_initializers(onnx.load(fixture_path(name)))["output_scale"])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    x = {"input": random_batch([1, 3, 32, 32], 3, seed=3)}
    runs = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, x)[0]
            for m in (sparse(model, groups, plan), slim(model, groups, plan))]
    assert np.abs(runs[0] - runs[1]).max() <= step * 1.01


# --- Q/DQ with per-channel scales on an activation; QOperator layers -----------------------------------


def _conv_qdq_per_channel_model() -> onnx.ModelProto:
    """Conv(8) -> QuantizeLinear/DequantizeLinear per channel (axis 1) -> Relu -> Conv(4) -> output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.uniform(0.01, 0.05, 8).astype(np.float32), "act_scale"),
             numpy_helper.from_array(rng.integers(0, 20, 8).astype(np.uint8), "act_zp"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c1", "act_scale", "act_zp"], ["q"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["q", "act_scale", "act_zp"], ["dq"], name="dq", axis=1),
             helper.make_node("Relu", ["dq"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["output"], name="conv2")]
    graph = helper.make_graph(nodes, "qdq_act", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_channel_qdq_on_an_activation_slices_its_scale_and_zero_point() -> None:
    model = from_proto(_conv_qdq_per_channel_model())
    groups = {g.id: g for g in find_groups(model)}
    group = groups["conv1"]
    assert group.prunable and group.channels == 8
    roles = {m.tensor: m.role for m in group.members}
    assert roles["act_scale"] == roles["act_zp"] == "keep"  # sliced, never zeroed
    plan = make_plan(model, PruneOptions(spec={"conv1": 0.5}, round_to=1), list(groups.values()))
    sparse_model, slim_model = sparse(model, list(groups.values()), plan), slim(model, list(groups.values()), plan)
    after = _initializers(slim_model)
    assert after["act_scale"].shape == (4,) and after["act_zp"].shape == (4,)
    assert np.all(_initializers(sparse_model)["act_scale"] > 0)
    x = {"input": random_batch([1, 3, 8, 8], 1)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= 1e-6


def _qoperator_model() -> onnx.ModelProto:
    """QuantizeLinear -> QLinearConv(8) -> QLinearConv(4) -> DequantizeLinear."""
    rng = np.random.default_rng(0)
    scalar = lambda name, v, dtype: numpy_helper.from_array(np.array(v, dtype=dtype), name)
    inits = [scalar("s", 0.05, np.float32), scalar("z", 128, np.uint8), scalar("ws", 0.02, np.float32),
             scalar("wz", 0, np.int8),
             numpy_helper.from_array(rng.integers(-50, 50, (8, 3, 3, 3)).astype(np.int8), "w1"),
             numpy_helper.from_array(rng.integers(-500, 500, 8).astype(np.int32), "b1"),
             numpy_helper.from_array(rng.integers(-50, 50, (4, 8, 1, 1)).astype(np.int8), "w2")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"], name="q"),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w1", "ws", "wz", "s", "z", "b1"], ["y1"],
                              name="qconv1", pads=[1, 1, 1, 1]),
             helper.make_node("QLinearConv", ["y1", "s", "z", "w2", "ws", "wz", "s", "z"], ["y2"], name="qconv2"),
             helper.make_node("DequantizeLinear", ["y2", "s", "z"], ["output"], name="dq")]
    graph = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qoperator_layers_are_counted_and_refused_with_a_reason() -> None:
    model = from_proto(_qoperator_model())
    report = inspect_model(model)
    layers = {row.node: row for row in report.layers}
    assert layers["qconv1"].macs == 8 * 3 * 3 * 3 * 64 and layers["qconv1"].params == 8 * 27 + 8
    assert layers["qconv2"].macs == 4 * 8 * 64 and layers["qconv2"].params == 32
    assert report.macs == 8 * 27 * 64 + 32 * 64
    group = next(g for g in report.groups if g.id == "qconv1")
    assert not group.prunable and "QLinearConv" in group.reason and "QDQ" in group.reason


def test_reconstruction_keeps_qdq_weights_on_their_grid() -> None:
    """Re-solved weights are snapped to their integers' grid, so the written QDQ model is the model that
    was checked: slim equals sparse exactly, as the QDQ format defines them."""
    model = onnxprune.load(fixture_path("qdq_residual_per_channel"))
    data = {"input": random_batch([1, 3, 32, 32], 16, seed=5)}
    result = prune(model, PruneOptions(ratio=0.4, data=data))
    assert result.reconstruction is not None and result.difference == 0.0
    assert any(fit.how == "solved" for fit in result.reconstruction.layers)
    weights = model.weights()
    for name in result.reconstruction.changed:
        how = model.derived.get(name)
        if how is not None and how.quant is not None:
            assert np.array_equal(how.representable(weights[name].values), weights[name].values), name


def test_readers_resolved_for_analysis_stay_on_the_qdq_grid() -> None:
    """`analyze --reconstruct` measures each entry with the readers re-solved: on a QDQ model their new
    values are snapped to the grid as `prune --data` snaps them, so the table measures the model it makes."""
    model = onnxprune.load(fixture_path("qdq_residual_per_channel"))
    groups = [g for g in find_groups(model) if g.prunable]
    removals = {g.id: {"0.5": np.arange(g.channels // 2)} for g in groups}
    batches = [{"input": random_batch([1, 3, 32, 32], 16, seed=5)}]
    resolved = resolved_readers(model, groups, removals, batches)
    quantized = [(name, values) for entry in resolved.values() for name, values in entry.items()
                 if (how := model.derived.get(name)) is not None and how.quant is not None]
    assert quantized
    for name, values in quantized:
        assert np.array_equal(model.derived[name].representable(values), values), name


def test_weights_quantized_as_activations_behind_a_transpose_are_lifted() -> None:
    """An unfolded PyTorch export transposes Linear weights at run time; quantize_static then quantizes
    them as activations (W -> Transpose -> QuantizeLinear -> DequantizeLinear -> MatMul). Before: 0 of 1
    groups. Now the float twin's groups, and the slim model keeps the DequantizeLinear of each weight."""
    twin = onnx.load(fixture_path("transformer"))
    proto = quantize(twin, (1, 16, 64), per_channel=False)
    model = from_proto(proto)
    groups = find_groups(model)
    assert [(g.id, g.channels, g.prunable) for g in groups] == \
        [(g.id, g.channels, g.prunable) for g in find_groups(from_proto(twin))]
    assert sum(g.prunable for g in groups) == 3
    plan = make_plan(model, PruneOptions(ratio=0.3), groups)
    sparse_model, slim_model = sparse(model, groups, plan), slim(model, groups, plan)
    onnx.checker.check_model(slim_model, full_check=True)
    count = lambda m, op: sum(n.op_type == op for n in m.graph.node)
    assert count(slim_model, "DequantizeLinear") == count(proto, "DequantizeLinear")
    assert count(sparse_model, "QuantizeLinear") == count(proto, "QuantizeLinear")
    x = {"input": random_batch([1, 16, 64], 3)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= 1e-6
    assert relative_difference(run_model(proto, x), run_model(sparse_model, x)) > 1e-3
