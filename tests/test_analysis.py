"""Sensitivity analysis: the table equals what pruning gives, on every fixture, through the fast path."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.entries import mask_points
from onnxprune.analysis.evaluator import FullRunner
from onnxprune.analysis.metrics import Fidelity, Top1, relative_distance
from onnxprune.analysis.table import ratio_key
from onnxprune.data import Dataset, load_data, model_specs
from onnxprune.graph.model import with_weights
from onnxprune.graph.runtime import session
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.importance import get_criterion
from onnxprune.pruning.inspect import inspect_model
from onnxprune.pruning.plan import Planner, candidate_groups
from onnxprune.pruning.prune import PruneOptions, prune
from onnxprune.pruning.surgery import sparse_values
from tests.conftest import FIXTURE_NAMES, FIXTURES, MANIFEST, fixture_path, load_fixture, quantized

SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}
DIGITS = fixture_path("digits_cnn")
DIGITS_TEST = FIXTURES / "digits_test.npz"


def random_npz(tmp_path, name: str, samples: int = 6, seed: int = 0):
    shape = SHAPES[name]
    x = np.random.default_rng(seed).standard_normal([samples, *shape[1:]]).astype(np.float32)
    path = tmp_path / f"{name}.npz"
    np.savez(path, input=x)
    return path


def naive_metric(metric, model_proto) -> float:
    """The metric of a whole model in a fresh session: what the table must reproduce (a QDQ model as the
    format defines it: analysis runs its weights lifted to floats, not onnxruntime's fused int8 kernels)."""
    return metric(FullRunner(session(model_proto, optimize=not quantized(model_proto))))


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if n != "digits_cnn"])
def test_table_equals_the_sparse_model_on_every_fixture(tmp_path, name: str) -> None:
    """Every group of every fixture: the table's fidelity at 0.5 is the sparse model's, computed naively."""
    model = load_fixture(name)
    groups = find_groups(model)
    if not candidate_groups(model, groups, []):
        pytest.skip("no prunable groups")
    data_path = random_npz(tmp_path, name)
    result = analyze(model, AnalyzeOptions(data=str(data_path), ratios=[0.5], batch_size=4))
    data = load_data(data_path, model_specs(model), batch_size=4)
    metric = Fidelity(data)
    original = with_weights(model)
    metric.record(FullRunner(session(original, optimize=not quantized(original))))
    planner = Planner(model, groups, {g.id: get_criterion("l1")(model, g) for g in groups if g.prunable})
    moved = 0
    for gid, row in result.table.groups.items():
        plan = planner.plan({gid: 0.5})
        expected = naive_metric(metric, with_weights(model, sparse_values(model, groups, plan)))
        assert row["0.5"] == pytest.approx(expected, abs=1e-6), gid
        moved += expected < 1 - 1e-4
    assert moved, "zeroing half of a group's channels must change some output"


def concat_constant_model(path) -> None:
    """Conv -> Concat(with a constant) -> Relu -> Conv, batch fixed at 1: the constant's channels are a
    group that only a Concat makes, so masks cannot stand in for its zeroed weights."""
    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["c1", "k"], ["cat"], axis=1),
             helper.make_node("Relu", ["cat"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "concat_constant", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                        [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8, 8])],
                              [weight("w1", [6, 3, 3, 3]), weight("b1", [6]), weight("k", [1, 4, 8, 8]),
                               weight("w2", [5, 10, 3, 3]), weight("b2", [5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_weights_mode_where_masks_would_not_be_exact(tmp_path) -> None:
    path = tmp_path / "concat_constant.onnx"
    concat_constant_model(path)
    model = onnxprune.load(path)
    groups = find_groups(model)
    modes = {g.id: mask_points(model, g) is not None for g in candidate_groups(model, groups, [])}
    assert modes == {"w1": True, "k": False}
    x = np.random.default_rng(1).standard_normal([5, 3, 8, 8]).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    result = analyze(model, AnalyzeOptions(data=str(tmp_path / "data.npz"), ratios=[0.25, 0.5]))
    metric = Fidelity(load_data(tmp_path / "data.npz", model_specs(model)))
    assert metric.data.batch_size == 1  # the model's batch is fixed
    metric.record(FullRunner(session(with_weights(model))))
    planner = Planner(model, groups, {g.id: get_criterion("l1")(model, g) for g in groups if g.prunable})
    for gid, row in result.table.groups.items():
        for key, value in row.items():
            plan = planner.plan({gid: float(key)})
            expected = naive_metric(metric, with_weights(model, sparse_values(model, groups, plan)))
            assert value == pytest.approx(expected, abs=1e-6)
            assert value < 1 - 1e-3


def chain_model(op: str) -> onnx.ModelProto:
    """x -> op(W1) -> op(W2) -> y: the first layer's output is an activation that the second layer reads."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w1", [6, 8]), ("w2", [8, 4]))]
    nodes = [helper.make_node(op, ["x", "w1"], ["h"], name="first"),
             helper.make_node(op, ["h", "w2"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_an_activation_a_layer_reads_is_not_a_weight(tmp_path, op: str) -> None:
    """MatMul->MatMul and Gemm->Gemm: the activation between them is no weight (it was, with role "in"),
    so analysis masks it (the fast mode: one session for every ratio) and `inspect --json` gives it no role."""
    model = onnxprune.graph.load.from_proto(chain_model(op))
    groups = find_groups(model)
    group = next(g for g in groups if g.id == "first")
    roles = {(m.tensor, m.is_weight): m.role for m in group.members}
    assert roles == {("w1", True): "out", ("h", False): None, ("w2", True): "in"}
    assert [(p.tensor, p.axis) for p in mask_points(model, group)] == [("h", 1)]
    members = next(g for g in inspect_model(model, groups).to_dict()["groups"] if g["id"] == "first")["members"]
    assert {m["tensor"]: m["role"] for m in members} == {"w1": "out", "h": None, "w2": "in"}
    x = np.random.default_rng(1).standard_normal([6, 6]).astype(np.float32)
    np.savez(tmp_path / "data.npz", x=x)
    result = analyze(model, AnalyzeOptions(data=str(tmp_path / "data.npz"), ratios=[0.5], groups=["first"]))
    metric = Fidelity(load_data(tmp_path / "data.npz", model_specs(model)))
    metric.record(FullRunner(session(with_weights(model))))
    plan = Planner(model, groups, {"first": get_criterion("l1")(model, group)}).plan({"first": 0.5})
    expected = naive_metric(metric, with_weights(model, sparse_values(model, groups, plan)))
    assert result.table.groups["first"]["0.5"] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name,ratios", [("digits_cnn", [0.3, 0.7]), ("residual", [0.2, 0.6]),
                                         ("inception", [0.5]), ("transformer", [0.4])])
def test_what_you_analyze_is_what_you_get(tmp_path, name: str, ratios: list[float]) -> None:
    """Pruning only one group at one ratio (slim) and evaluating gives the table's number."""
    model = onnxprune.load(fixture_path(name))
    data_path = DIGITS_TEST if name == "digits_cnn" else random_npz(tmp_path, name, samples=8)
    result = analyze(model, AnalyzeOptions(data=str(data_path), ratios=ratios, exact=True))
    data = load_data(data_path, model_specs(model))
    metric = Top1(data) if data.labels is not None else Fidelity(data)
    if isinstance(metric, Fidelity):
        metric.record(FullRunner(session(with_weights(model))))
    assert result.table.metric == metric.name
    assert result.table.baseline == pytest.approx(naive_metric(metric, with_weights(model)), abs=1e-9)
    checked = 0
    for gid, row in result.table.groups.items():
        for ratio in ratios:
            pruned = prune(onnxprune.load(fixture_path(name)), PruneOptions(spec={gid: ratio}, mode="slim"))
            assert row[ratio_key(ratio)] == pytest.approx(naive_metric(metric, pruned.model), abs=1e-5), (gid, ratio)
            checked += 1
    assert checked >= 2


def test_metrics_by_hand() -> None:
    """top-1 and fidelity against numbers computed directly."""
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    data = Dataset({"input": np.zeros((4, 1), np.float32)}, {"labels": np.array([1, 0, 0, 0])}, batch_size=3)

    def run(feeds, key=None):
        start = key * 3
        return {"out": scores[start:start + len(feeds["input"])]}

    assert Top1(data)(run) == pytest.approx(0.75)
    fidelity = Fidelity(data)
    fidelity.record(run)
    assert fidelity(run) == 1.0
    halved = Fidelity(data, fidelity.reference)
    assert halved(lambda feeds, key=None: {"out": run(feeds, key)["out"] * 0.5}) == pytest.approx(0.5)
    distance = relative_distance([np.array([[3.0, 4.0]])], [np.array([[0.0, 0.0]])], 1)
    assert distance[0] == pytest.approx(5.0)  # an all-zero reference: the absolute distance


def test_top1_tracks_accuracy_on_digits() -> None:
    """The digits table is top-1 on the test split; pruning the least sensitive group hurts least."""
    result = analyze(onnxprune.load(DIGITS), AnalyzeOptions(data=str(DIGITS_TEST), ratios=[0.5, 0.9], exact=True))
    table = result.table
    assert table.metric == "top1" and table.baseline > 0.97
    assert table.data == {"source": str(DIGITS_TEST), "samples": 450}
    for row in table.groups.values():
        assert row["0.9"] < row["0.5"] <= table.baseline
        assert all(value == round(value * 450) / 450 for value in row.values())  # counts of 450 samples
    assert sum(table.macs_share.values()) > 1  # a conv between two groups counts for both


def test_analysis_names_groups_as_a_spec_does() -> None:
    """`AnalyzeOptions.groups` is checked by the same function as a spec's keys (plan.named_groups)."""
    model = onnxprune.load(fixture_path("plain_cnn"))
    groups = find_groups(model)
    fixed = next((g.id for g in groups if not g.prunable), None)
    with pytest.raises(onnxprune.OnnxPruneError, match="unknown group 'nope'"):
        analyze(model, AnalyzeOptions(groups=["nope"], ratios=[0.5]))
    if fixed is not None:
        with pytest.raises(onnxprune.OnnxPruneError, match="cannot be pruned"):
            analyze(model, AnalyzeOptions(groups=[fixed], ratios=[0.5]))
