"""The backbone: on every fixture, the sparse and the slim model compute the same function."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune.channels import find_groups
from onnxprune.pruner import PruneOptions, make_plan
from onnxprune.surgery import slim, sparse
from onnxprune.transform import transform
from tests.conftest import FIXTURE_NAMES, MANIFEST, fixture_path, random_batch, relative_difference, run_model

SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}
TOLERANCE = 1e-4


def _prune_both(name: str, options: PruneOptions):
    model = onnxprune.load(fixture_path(name))
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
    original = onnxprune.io.with_weights(model)
    for batch in (1, 3):
        x = {"input": random_batch(SHAPES[name], batch, seed=batch)}
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
    assert not residual.prunable and "LayerNormalization" in residual.reason
    shapes = {t.name: list(t.dims) for t in slim_model.graph.initializer}
    assert shapes["attn.q.bias"][0] % 4 == 0 and shapes["attn.q.bias"][0] < 64


def test_transformer_whole_heads() -> None:
    model, plan, sparse_model, slim_model = _prune_both("transformer", PruneOptions(ratio=0.4, attention="heads"))
    heads = {g.id: g for g in find_groups(model, "heads")}["/attn/q/MatMul"]
    assert heads.prunable and heads.channels == 4  # q, k and v lose whole heads together
    assert len({m.tensor for m in heads.members} & {"attn.q.bias", "attn.k.bias", "attn.v.bias"}) == 3
    x = {"input": random_batch(SHAPES["transformer"], 3)}
    assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= TOLERANCE
    dense = transform(onnxprune.io.from_proto(sparse_model), attention="heads")
    assert relative_difference(run_model(sparse_model, x), run_model(dense.model, x)) <= TOLERANCE
    assert dense.plan.macs_after <= plan.macs_after * 1.0001
