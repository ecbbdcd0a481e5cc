"""Whole heads (`--attention heads`), grouped-query attention and RoPE on the attention fixtures."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.prune import PruneOptions, make_plan
from onnxprune.pruning.surgery import slim, sparse
from tests.conftest import MANIFEST, fixture_path, random_batch, relative_difference, run_model

SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}
TOLERANCE = 1e-4
ATTENTION = ["transformer", "attention_guard", "llama_block", "llama_block_dynamo", "swin_block"]


def _score_inputs(model) -> set[str]:
    """Tensors a MatMul of two activations reads: attention's queries, keys, scores and values."""
    matmuls = [n for n in model.graph.nodes if n.op == "MatMul"]
    return {t.name for n in matmuls if not any(isinstance(t, gs.Constant) for t in n.inputs) for t in n.inputs}


@pytest.mark.parametrize("name", ATTENTION)
def test_every_head_group_is_prunable_and_sparse_equals_slim(name: str) -> None:
    model = onnxprune.load(fixture_path(name))
    groups = find_groups(model, "heads")
    scores = _score_inputs(model)
    heads = [g for g in groups if any(m.tensor in scores for m in g.members)]
    assert heads and all(g.prunable for g in heads), [(g.id, g.reason) for g in heads]
    plan = make_plan(model, PruneOptions(spec={g.id: 0.5 for g in heads}, attention="heads", round_to=1), groups)
    assert set(plan.groups) == {g.id for g in heads}
    sparse_model, slim_model = sparse(model, groups, plan), slim(model, groups, plan)
    for batch in (1, 3):
        x = {"input": random_batch(SHAPES[name], batch, seed=batch)}
        assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= TOLERANCE


@pytest.mark.parametrize("name", ["llama_block", "llama_block_dynamo"])
def test_grouped_query_attention_loses_whole_key_value_groups(name: str) -> None:
    """4 query heads share 2 key/value heads (repeat_kv's Expand): the unit is a key/value group, which
    takes its 2 query heads, its key and value rows, and the output projection's columns along."""
    model = onnxprune.load(fixture_path(name))
    (group,) = [g for g in find_groups(model, "heads") if g.prunable and g.channels == 2]
    head_dim = 8
    q = next(m for m in group.weights() if m.role == "out" and m.size == 4 * head_dim)
    kv = [m for m in group.weights() if m.role == "out" and m.size == 2 * head_dim]
    assert len(kv) == 2  # key and value projections
    # a key/value group holds 2 query heads: 2 * head_dim query columns per group channel
    assert np.bincount(q.channel).tolist() == [2 * head_dim, 2 * head_dim]
    assert all(np.bincount(m.channel).tolist() == [head_dim, head_dim] for m in kv)
    plan = make_plan(model, PruneOptions(spec={group.id: 0.5}, attention="heads", round_to=1))
    slim_model = slim(model, find_groups(model, "heads"), plan)
    before, after = _matrix_params(onnx.load(fixture_path(name))), _matrix_params(slim_model)
    hidden = 32  # one group: 2 query heads, 1 key and 1 value head (rows), 2 heads of the output projection
    assert before - after == (2 + 1 + 1 + 2) * head_dim * hidden


def _matrix_params(proto: onnx.ModelProto) -> int:
    return sum(int(np.prod(i.dims)) for i in proto.graph.initializer if len(i.dims) == 2 and i.dims[0] > 4)


def test_rope_keeps_its_rotate_half_pairs_when_head_dims_are_pruned() -> None:
    """rotate_half pairs position j with j + head_dim/2 in every head: pruning head_dim removes both."""
    model = onnxprune.load(fixture_path("llama_block"))
    q = next(g for g in find_groups(model) if g.id.endswith("q_proj/MatMul"))
    assert q.prunable and q.channels == 4  # head_dim 8: 4 pairs
    member = next(m for m in q.weights() if m.role == "out" and m.size == 32)
    for channel in range(4):
        positions = member.index[member.channel == channel] % 8
        assert sorted(set(positions.tolist())) == [channel, channel + 4]


def test_tile_repeats_tie_every_copy_of_a_channel() -> None:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h"], name="first"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Tile", ["r", "reps"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["output"])]
    inits = [numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2], np.int64), "reps")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 5, 16])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 5, 4])], inits)
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    groups = find_groups(model)
    (group,) = [g for g in groups if g.prunable]
    w2 = next(m for m in group.members if m.tensor == "w2")
    assert group.channels == 8 and sorted(w2.index[w2.channel == 3].tolist()) == [3, 11]
    plan = make_plan(model, PruneOptions(spec={group.id: 0.5}, round_to=1), groups)
    x = {"input": rng.standard_normal((1, 5, 16)).astype(np.float32)}
    slim_model = slim(model, groups, plan)
    assert relative_difference(run_model(sparse(model, groups, plan), x), run_model(slim_model, x)) <= 1e-5
    assert [list(i.dims) for i in slim_model.graph.initializer if i.name == "w2"] == [[8, 4]]
