"""Normalizations over a pruned channel axis (issue 9, item 1): the hidden dimension of transformers and the
channels of ConvNeXt-V2 are prunable, and the slim model computes exactly what the sparse one computes.

Every test here failed before `rules/norms.py`: the groups stopped at the normalization ("channels are
normalized by ...", "channels are reduced by ...", "normalized in groups by ...").
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.prune import PruneOptions, make_plan, prune
from onnxprune.pruning.surgery import slim, sparse
from tests.conftest import fixture_path, random_batch, relative_difference, run_model

TOLERANCE = 1e-4

# fixture, group, what the group must now hold (a scale of the normalization it passes), the form
CASES = [
    ("bert_block", "/embed/MatMul", "norm2.weight", "fused LayerNormalization"),
    ("bert_block_opset16", "/embed/MatMul", "norm2.weight", "decomposed LayerNorm"),
    ("convnextv2", "/stem/Conv", "block.norm.weight", "channels-first LayerNorm (decomposed) and fused LayerNorm"),
    ("convnextv2", "/block/pwconv1/MatMul", "block.grn.gamma", "GRN: ReduceMean over channels"),
    ("rmsnorm", "embed/MatMul", "g2", "RMSNorm (Pow-ReduceMean-Sqrt-Div, and Reciprocal-Mul)"),
    ("rmsnorm_fused", "embed/MatMul", "g2", "RMSNormalization"),
    ("bert_block_dynamo", "node_MatMul_2", "norm2.weight", "fused LayerNormalization, opset 18"),
    ("convnextv2_dynamo", "node_conv2d", "block.norm.weight", "channels-first LayerNorm, opset 18"),
    ("vit_block", "/vit/vit/embeddings/patch_embeddings/projection/Conv", "vit.vit.embeddings.cls_token",
     "class token (Expand, Concat) into LayerNormalization"),
    ("vit_block_dynamo", "node_conv2d", "vit.vit.embeddings.cls_token", "class token, opset 18"),
]


def _check(proto: onnx.ModelProto, options: PruneOptions, shape: list[int], name: str = "input"):
    """Prune sparse and slim; assert slim == sparse at batch 1 and 3 (and that pruning changed the function)."""
    model = from_proto(proto)
    groups = find_groups(model)
    plan = make_plan(model, options, groups)
    sparse_model, slim_model = sparse(model, groups, plan), slim(model, groups, plan)
    for batch in (1, 3):
        x = {name: random_batch(shape, batch, seed=batch)}
        y_sparse, y_slim = run_model(sparse_model, x), run_model(slim_model, x)
        assert relative_difference(y_sparse, y_slim) <= TOLERANCE
        assert relative_difference(run_model(proto, x), y_sparse) > TOLERANCE
    return plan, slim_model


@pytest.mark.parametrize("fixture,group,scale,form", CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_the_channels_through_a_normalization_prune_exactly(fixture: str, group: str, scale: str, form: str) -> None:
    proto = onnx.load(fixture_path(fixture))
    found = {g.id: g for g in find_groups(from_proto(proto))}[group]
    assert found.prunable, f"{form}: {found.reason}"
    assert scale in {m.tensor for m in found.members}
    shape = [1, *[d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]]
    plan, slim_model = _check(proto, PruneOptions(spec={group: 0.5}, round_to=1), shape)
    assert len(plan.groups[group].removed) == found.channels // 2
    params = {i.name: int(np.prod(i.dims)) for i in slim_model.graph.initializer}
    before = {i.name: int(np.prod(i.dims)) for i in proto.graph.initializer}
    assert sum(params.values()) < sum(before.values())
    assert scale not in params or params[scale] < before[scale]  # sliced (or rescaled into a new constant)


@pytest.mark.parametrize("attention", ["dims", "heads"])
def test_the_class_token_is_part_of_the_hidden_group(attention: str) -> None:
    """ViT prepends its class token (a constant [1, 1, hidden]) by Expand and Concat on the sequence axis:
    its hidden channels are produced there, so sparse zeroes the removed ones and slim slices them, and
    LayerNorm reads exact zeros (before: "removed channels would be unknown, not 0, where
    LayerNormalization ... reads them", and ViT's hidden group was refused)."""
    name, group, token = "vit_block", "/vit/vit/embeddings/patch_embeddings/projection/Conv", "vit.vit.embeddings.cls_token"
    proto = onnx.load(fixture_path(name))
    model = from_proto(proto)
    groups = find_groups(model, attention)
    plan = make_plan(model, PruneOptions(spec={group: 0.5}, round_to=1, attention=attention), groups)
    removed = plan.groups[group].removed
    sparse_model, slim_model = sparse(model, groups, plan), slim(model, groups, plan)
    tokens = {i.name: numpy_helper.to_array(i) for i in sparse_model.graph.initializer if i.name == token}
    original = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name == token}
    assert np.all(tokens[token][..., removed] == 0) and np.all(original[token][..., removed] != 0)
    assert [list(i.dims) for i in slim_model.graph.initializer if i.name == token] == [[1, 1, 16]]
    for batch in (1, 3):
        x = {"input": random_batch([1, 3, 16, 16], batch, seed=batch)}
        assert relative_difference(run_model(sparse_model, x), run_model(slim_model, x)) <= TOLERANCE


def test_inspect_shows_the_hidden_dimension_prunable() -> None:
    from tests.conftest import cli

    code, out, _ = cli("inspect", fixture_path("bert_block"), "--json")
    assert code == 0
    import json

    groups = {g["id"]: g for g in json.loads(out)["groups"]}
    assert groups["/embed/MatMul"]["prunable"] and groups["/embed/MatMul"]["channels"] == 32


def _rms_graph(op: str, opset: int, domain_ok: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array((1 + 0.3 * rng.standard_normal(16)).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node(op, ["h", "g"], ["n"], name="norm", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    return model


def test_simplified_layer_normalization_of_onnxruntime(monkeypatch) -> None:
    """onnxruntime's SimplifiedLayerNormalization (RMSNorm in models its optimizer wrote; domain ""). The ONNX
    checker does not know it, and loading refuses what the checker refuses: the rule is tested past it."""
    monkeypatch.setattr("onnxprune.graph.load.check_with_onnx", lambda proto, where: None)
    proto = _rms_graph("SimplifiedLayerNormalization", 17)
    plan, slim_model = _check(proto, PruneOptions(spec={"fc1": 0.5}, round_to=1), [1, 5, 6], "x")
    assert "fc1" in plan.groups
    assert next(n for n in slim_model.graph.node if n.name == "norm").op_type == "SimplifiedLayerNormalization"


@pytest.mark.parametrize("opset", [17, 18])
def test_fused_layer_norm_without_bias_at_both_reduce_forms(opset: int) -> None:
    """The exact rewrite writes Reduce* axes as an attribute (opset 17) or an input (18 on); no bias here."""
    proto = _rms_graph("LayerNormalization", opset)
    plan, slim_model = _check(proto, PruneOptions(spec={"fc1": 0.5}, round_to=1), [1, 5, 6], "x")
    ops = [n.op_type for n in slim_model.graph.node]
    assert "fc1" in plan.groups and "LayerNormalization" not in ops and "ReduceSumSquare" in ops


def test_group_normalization_loses_whole_groups() -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array((1 + 0.3 * rng.standard_normal(16)).astype(np.float32), "scale"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "bias"),
             numpy_helper.from_array(rng.standard_normal((5, 16, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("GroupNormalization", ["h", "scale", "bias"], ["n"], name="gn", num_groups=4),
             helper.make_node("Relu", ["n"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 8, 8])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    proto.ir_version = 10
    group = {g.id: g for g in find_groups(from_proto(proto))}["conv1"]
    assert group.prunable and group.channels == 4  # whole groups of 4 channels
    _, slim_model = _check(proto, PruneOptions(spec={"conv1": 0.5}, round_to=1), [1, 3, 8, 8], "x")
    gn = next(n for n in slim_model.graph.node if n.op_type == "GroupNormalization")
    assert helper.get_attribute_value(gn.attribute[0]) == 2


def test_group_norm_as_exported_before_opset_18_loses_whole_groups() -> None:
    """PyTorch's GroupNorm at opset 17: Reshape [0, G, -1] -> InstanceNormalization -> Reshape -> Mul -> Add.
    Channel c goes with row c // (C/G), so whole groups go (they stopped at "regroups the channel axis")."""
    proto = onnx.load(fixture_path("groupnorm"))
    groups = {g.id: g for g in find_groups(from_proto(proto))}
    assert groups["/gn_part/gn_part.0/Conv"].prunable and groups["/gn_part/gn_part.0/Conv"].channels == 8
    assert groups["/gn_part/gn_part.3/Conv"].prunable and groups["/gn_part/gn_part.3/Conv"].channels == 4
    spec = {"/gn_part/gn_part.0/Conv": 0.5, "/gn_part/gn_part.3/Conv": 0.5}
    _, slim_model = _check(proto, PruneOptions(spec=spec, round_to=1), [1, 3, 32, 32])
    kept = {i.name: list(i.dims) for i in slim_model.graph.initializer}
    assert kept["gn_part.0.weight"][0] == 16 and kept["gn_part.3.weight"][:2] == [16, 16]
    assert kept["/gn_part/gn_part.1/Unsqueeze_output_0"] == [16, 1, 1]  # the GroupNorm scale, lifted
    assert kept["/gn_part/gn_part.1/Constant_1_output_0"] == [4]  # InstanceNormalization over 4 of 8 groups
    assert kept["/gn_part/gn_part.4/Constant_1_output_0"] == [2]


def test_a_normalization_reading_nonzero_removed_channels_is_refused() -> None:
    """Removed channels that are not zero where the norm reads them (Sigmoid(0) = 0.5) would change its
    mean: the group is unprunable, with the reason."""
    proto = _rms_graph("RMSNormalization", 23)
    sigmoid = helper.make_node("Sigmoid", ["h"], ["hs"], name="sigmoid")
    proto.graph.node.insert(1, sigmoid)
    proto.graph.node[2].input[0] = "hs"
    group = {g.id: g for g in find_groups(from_proto(proto))}["fc1"]
    assert not group.prunable and "0.5" in group.reason and "RMSNormalization" in group.reason


@pytest.mark.parametrize("fixture,group", [("bert_block", "/embed/MatMul"), ("convnextv2", "/stem/Conv")])
def test_approximate_norms_are_an_explicit_choice(fixture: str, group: str) -> None:
    """norms="approximate" keeps fused LayerNorms over the kept channels (Torch-Pruning's form): the slim
    model then differs from sparse, which the result says; the exact slim model is what is verified."""
    model = onnxprune.load(fixture_path(fixture))
    options = PruneOptions(spec={group: 0.5}, round_to=1)
    exact = prune(model, options)
    approximate = prune(onnxprune.load(fixture_path(fixture)), PruneOptions(spec={group: 0.5}, round_to=1,
                                                                            norms="approximate"))
    assert exact.approximation is None and exact.difference <= TOLERANCE
    assert approximate.difference <= TOLERANCE  # the exact slim model, built for the check
    assert approximate.approximation > TOLERANCE  # the written model: measured, by choice not exact
    ops = [n.op_type for n in approximate.model.graph.node]
    assert "LayerNormalization" in ops and len(ops) < len(exact.model.graph.node)


def test_norms_option_is_checked() -> None:
    from onnxprune.errors import OptionError

    with pytest.raises(OptionError, match="norms"):
        PruneOptions(ratio=0.5, norms="fast").check()


@pytest.mark.parametrize("fixture,depthwise", [("convnextv2", "/block/dwconv/Conv"),
                                               ("convnextv2_dynamo", "node_conv2d_1"),
                                               ("mobilenet_se", "/block1/depthwise/depthwise.0/Conv")])
def test_a_depthwise_conv_shrinks_on_both_sides(fixture: str, depthwise: str) -> None:
    """A depthwise conv's weight [C, 1, k, k] has no input-channel axis: its input channels are its output
    channels, one group, so that group shrinks the whole layer (it counted half, and ConvNeXt-V2's share
    stayed at 0.86 with every group prunable). What is left is the stem's 3 image channels and the head's
    classes: a model's input and output."""
    from onnxprune.pruning.inspect import _shrinkable, inspect_model

    model = onnxprune.load(fixture_path(fixture))
    groups = find_groups(model)
    shares = _shrinkable(model, groups)
    assert shares[depthwise] == 1.0
    assert sorted(v for v in shares.values() if v < 1) == [0.5, 0.5]  # the stem's input, the head's output
    if fixture.startswith("convnextv2"):
        assert inspect_model(model, groups).shrinkable_macs >= 0.90


def test_a_constant_tiled_into_the_hidden_group_is_zeroed_and_sliced() -> None:
    """Tile of a constant (a learned token repeated over the sequence) added to the hidden states before
    a LayerNorm: the constant produces its channels, so the hidden group takes its slices (it was refused:
    its removed channels were nonzero where the LayerNorm reads them)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((1, 1, 16)).astype(np.float32), "token"),
             numpy_helper.from_array(np.array([1, 5, 1], dtype=np.int64), "repeats"),
             numpy_helper.from_array((1 + 0.3 * rng.standard_normal(16)).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Tile", ["token", "repeats"], ["t"], name="tile"),
             helper.make_node("Add", ["h", "t"], ["s"], name="add"),
             helper.make_node("LayerNormalization", ["s", "g"], ["n"], name="norm", axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["n", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    group = {g.id: g for g in find_groups(from_proto(proto))}["fc1"]
    assert group.prunable, group.reason
    assert ("token", "out") in {(m.tensor, m.role) for m in group.members}
    _, slim_model = _check(proto, PruneOptions(spec={"fc1": 0.5}, round_to=1), [1, 5, 6], "x")
    assert [list(i.dims) for i in slim_model.graph.initializer if i.name == "token"] == [[1, 1, 8]]
