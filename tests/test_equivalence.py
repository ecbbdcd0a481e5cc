"""The backbone: on every fixture, the sparse and the slim model compute the same function."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.prune import PruneOptions, make_plan
from onnxprune.pruning.surgery import slim, sparse
from onnxprune.pruning.transform import transform
from tests.conftest import (
    FIXTURE_NAMES,
    SHAPES,
    fixture_path,
    input_shapes,
    load_fixture,
    random_batch,
    relative_difference,
    run_model,
)

TOLERANCE = 1e-4


def _prune_both(name: str, options: PruneOptions):
    model = load_fixture(name)
    groups = find_groups(model, options.attention)
    plan = make_plan(model, options, groups)
    return model, plan, sparse(model, groups, plan), slim(model, groups, plan)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_sparse_equals_slim(name: str, ratio: float) -> None:
    model, plan, sparse_model, slim_model = _prune_both(name, PruneOptions(ratio=ratio))
    onnx.checker.check_model(sparse_model)
    onnx.checker.check_model(slim_model)
    prunable = [g for g in find_groups(model) if g.prunable]
    if prunable:
        assert plan.groups, "a model with prunable groups must lose channels"
        assert plan.macs_after < plan.macs_before
        assert slim_model.ByteSize() < sparse_model.ByteSize()
    original = onnxprune.graph.model.with_weights(model)
    for batch, shape in [(b, s) for s in input_shapes(name) for b in (1, 3)]:  # two lengths when dynamic
        x = {"input": random_batch(shape, batch, seed=batch)}
        y_sparse, y_slim = run_model(sparse_model, x), run_model(slim_model, x)
        assert relative_difference(y_sparse, y_slim) <= TOLERANCE
        if plan.groups:  # pruning changed the function: the comparison above is not vacuous
            assert relative_difference(run_model(original, x), y_sparse) > TOLERANCE


@pytest.mark.parametrize("name", ["residual", "mobilenet_se", "densenet", "shufflenet", "transformer", "c2f"])
@pytest.mark.parametrize("criterion,round_to", [("l2", 4), ("bn", 1)])
def test_criteria_and_rounding(name: str, criterion: str, round_to: int) -> None:
    model, plan, sparse_model, slim_model = _prune_both(
        name, PruneOptions(ratio=0.5, criterion=criterion, round_to=round_to))
    groups = {g.id: g for g in find_groups(model)}
    for gid, part in plan.groups.items():
        kept = part.channels - len(part.removed)
        assert kept >= 1
        assert kept % round_to == 0 or kept == part.channels
        assert groups[gid].prunable
    x = {"input": random_batch(SHAPES[name], 2)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= TOLERANCE


def test_sparse_keeps_the_graph() -> None:
    """Sparse = same nodes, same tensor names, same shapes; only values change."""
    _, _, sparse_model, _ = _prune_both("constant_weights", PruneOptions(ratio=0.5))
    original = onnx.load(fixture_path("constant_weights"))
    assert [n.op_type for n in sparse_model.graph.node] == [n.op_type for n in original.graph.node]
    assert [list(n.output) for n in sparse_model.graph.node] == [list(n.output) for n in original.graph.node]
    assert len(sparse_model.graph.initializer) == 0  # weights stay in their Constant nodes
    zeros = 0
    for before, after in zip(original.graph.node, sparse_model.graph.node):
        if before.op_type == "Constant":
            a = onnx.numpy_helper.to_array(before.attribute[0].t)
            b = onnx.numpy_helper.to_array(after.attribute[0].t)
            assert a.shape == b.shape
            zeros += int(np.count_nonzero((a != 0) & (b == 0)))
    assert zeros > 0


def test_identity_weights_are_written_back() -> None:
    _, plan, sparse_model, _ = _prune_both("identity_weights", PruneOptions(ratio=0.5))
    raw = {t.name: onnx.numpy_helper.to_array(t) for t in sparse_model.graph.initializer}
    assert "conv2.0.weight_raw" in raw
    assert np.count_nonzero(np.all(raw["conv2.0.weight_raw"] == 0, axis=(1, 2, 3))) == len(
        plan.groups["/conv2/conv2.0/Conv"].removed)


def test_transformer_prunes_ffn_and_head_dims() -> None:
    model, _, _, slim_model = _prune_both("transformer", PruneOptions(ratio=0.5))
    groups = {g.id: g for g in find_groups(model)}
    assert groups["/ffn/ffn.0/MatMul"].prunable and groups["/ffn/ffn.0/MatMul"].channels == 256
    assert groups["/attn/q/MatMul"].channels == 16  # head_dim, shared by q and k, uniform over heads
    residual = groups["/attn/out/MatMul"]
    assert not residual.prunable and "model input" in residual.reason  # the residual stream is the input (the
    # LayerNorms no longer stop it: bert_block, with an embedding, prunes it; see test_norms)
    shapes = {t.name: list(t.dims) for t in slim_model.graph.initializer}
    assert shapes["attn.q.bias"][0] % 4 == 0 and shapes["attn.q.bias"][0] < 64


def test_transformer_whole_heads() -> None:
    model, plan, sparse_model, slim_model = _prune_both("transformer", PruneOptions(ratio=0.4, attention="heads"))
    heads = {g.id: g for g in find_groups(model, "heads")}["/attn/q/MatMul"]
    assert heads.prunable and heads.channels == 4  # q, k and v lose whole heads together
    assert len({m.tensor for m in heads.members} & {"attn.q.bias", "attn.k.bias", "attn.v.bias"}) == 3
    x = {"input": random_batch(SHAPES["transformer"], 3)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= TOLERANCE
    dense = transform(onnxprune.graph.load.from_proto(sparse_model), attention="heads")
    assert relative_difference(run_model(sparse_model, x), run_model(dense.model, x)) <= TOLERANCE
    assert dense.plan.macs_after <= plan.macs_after * 1.0001


def test_heads_pass_the_nan_guard_of_exported_attention() -> None:
    """Exported scaled-dot-product attention (GPT-2, Phi) guards its weights with Softmax -> IsNaN -> Where:
    whole heads go through the guard (they stopped at "no channel rule for IsNaN")."""
    model, plan, sparse_model, slim_model = _prune_both("attention_guard", PruneOptions(ratio=0.4, attention="heads"))
    heads = {g.id: g for g in find_groups(model, "heads")}["/attn/q/MatMul"]
    assert heads.prunable and heads.channels == 4
    assert {"/attn/IsNaN_output_0", "/attn/Where_output_0"} <= {m.tensor for m in heads.members}
    assert "/attn/q/MatMul" in plan.groups
    for batch in (1, 3):
        x = {"input": random_batch(SHAPES["attention_guard"], batch, seed=batch)}
        y_sparse, y_slim = run_model(sparse_model, x), run_model(slim_model, x)
        assert relative_difference(y_sparse, y_slim) <= TOLERANCE
    kept = [list(i.dims) for i in slim_model.graph.initializer if i.name == "attn.q.bias"]
    assert kept[0][0] < 32 and kept[0][0] % 8 == 0  # whole heads of 8 went


@pytest.mark.parametrize("with_c", [True, False])
def test_gemm_with_beta_zero_takes_the_compensation(with_c: bool) -> None:
    """Removed channels after a Sigmoid are 0.5, not 0: the next Gemm's bias takes their share. With
    beta = 0 its C counts for nothing, so the share must not be divided by beta (it was: inf)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "w2")]
    if with_c:
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "c2"))
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm1"),
             helper.make_node("Sigmoid", ["h"], ["s"], name="sigmoid"),
             helper.make_node("Gemm", ["s", "w2", *(["c2"] if with_c else [])], ["y"], name="gemm2", beta=0.0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = PruneOptions(spec={"gemm1": 0.5}, round_to=1)
    slim_model = onnxprune.prune(onnxprune.graph.load.from_proto(proto), options).model
    sparse_model = sparse(onnxprune.graph.load.from_proto(proto), *_groups_and_plan(proto, options))
    x = {"x": random_batch([5, 8], 5)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= 1e-5
    assert [list(i.dims) for i in slim_model.graph.initializer if i.name == "w2"] == [[3, 4]]  # pruned


def _groups_and_plan(proto: onnx.ModelProto, options: PruneOptions):
    model = onnxprune.graph.load.from_proto(proto)
    groups = find_groups(model)
    return groups, make_plan(model, options, groups)


def test_rank_zero_input_gets_a_scalar_in_the_check() -> None:
    """A scalar model input (a scale) has no batch axis: the sparse-vs-slim check feeds it a scalar."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Mul", ["h", "scale"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8]),
                                           helper.make_tensor_value_info("scale", TensorProto.FLOAT, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2, 8, 8])],
                              [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.standard_normal((2, 8, 1, 1)).astype(np.float32), "w2")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = onnxprune.prune(onnxprune.graph.load.from_proto(proto), PruneOptions(spec={"conv1": 0.5}, round_to=1))
    assert result.difference is not None and result.difference <= 1e-4
    x = {"x": random_batch([2, 3, 8, 8], 2), "scale": np.array(1.5, dtype=np.float32)}
    assert relative_difference(run_model(sparse(onnxprune.graph.load.from_proto(proto), *_groups_and_plan(
        proto, PruneOptions(spec={"conv1": 0.5}, round_to=1))), x), run_model(result.model, x)) <= 1e-5


def test_a_slim_model_that_is_not_exact_is_refused_with_one_line(tmp_path, capsys, monkeypatch) -> None:
    """When the sparse-vs-slim check fails, the CLI says so in one line, exits 2 and writes nothing."""
    import onnxprune.pruning.prune
    from onnxprune.cli import main

    answers = iter([0.5, 0.0])  # slim vs sparse, then the reference's own rounding noise
    monkeypatch.setattr(onnxprune.pruning.prune, "max_relative_difference", lambda a, b: next(answers))
    out = tmp_path / "slim.onnx"
    assert main(["prune", str(fixture_path("plain_cnn")), "--ratio", "0.3", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "differs from the sparse one" in err and err.count("\n") == 0
    assert not out.exists()
