"""Property tests: on random small DAGs of Conv/BN/activations/Add/Concat/Split, pruning keeps the invariant."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.importance import get_criterion
from onnxprune.pruning.plan import Planner, candidate_groups
from onnxprune.pruning.surgery import slim, sparse
from onnxprune.pruning.transform import transform
from tests.conftest import relative_difference, run_model

SIZE = 6  # spatial size: every op keeps it, so any two tensors of equal channels can be added


class _Builder:
    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits, self.n = rng, [], [], 0
        self.tensors: list[tuple[str, int]] = [("input", 4)]

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def weight(self, shape: tuple[int, ...], scale: float = 0.3) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array((self.rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    def add(self, op: str, inputs: list[str], channels: int, **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.tensors.append((out, channels))
        return out

    def conv(self, x: str, cin: int, cout: int, kernel: int, groups: int = 1) -> str:
        w = self.weight((cout, cin // groups, kernel, kernel))
        b = self.weight((cout,))
        return self.add("Conv", [x, w, b], cout, kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4, group=groups)

    def bn(self, x: str, c: int) -> str:
        scale, bias = self.weight((c,), 1.0), self.weight((c,))
        mean = self.weight((c,))
        var = self.name("var")
        self.inits.append(numpy_helper.from_array(self.rng.uniform(0.5, 2, c).astype(np.float32), var))
        return self.add("BatchNormalization", [x, scale, bias, mean, var], c)


STEPS = st.lists(st.tuples(st.sampled_from(["conv", "conv", "conv1", "dw", "group", "bn", "relu", "silu", "add", "concat",
                                             "split", "pool", "leaky", "sigmoid", "conv1"]),
                           st.integers(0, 10**6)), min_size=3, max_size=10)


def build(steps: list[tuple[str, int]], seed: int) -> onnx.ModelProto:
    b = _Builder(np.random.default_rng(seed))
    for kind, pick in steps:
        x, c = b.tensors[pick % len(b.tensors)]
        if kind in ("conv", "conv1"):
            b.conv(x, c, 4 + pick % 9, 3 if kind == "conv" else 1)
        elif kind == "dw":
            b.conv(x, c, c * (1 + pick % 2), 3, groups=c)
        elif kind == "group" and c % 2 == 0:
            b.conv(x, c, c, 3, groups=2)
        elif kind == "bn":
            b.bn(x, c)
        elif kind in ("relu", "leaky", "sigmoid"):
            b.add({"relu": "Relu", "leaky": "LeakyRelu", "sigmoid": "Sigmoid"}[kind], [x], c)
        elif kind == "silu":
            s = b.add("Sigmoid", [x], c)
            b.add("Mul", [x, s], c)
        elif kind in ("add", "concat"):
            same = [t for t in b.tensors if t[1] == c and t[0] != x]
            other, oc = same[pick % len(same)] if (same and kind == "add") else b.tensors[(pick // 7) % len(b.tensors)]
            if kind == "add" and oc == c:
                b.add("Add", [x, other], c)
            else:
                b.add("Concat", [x, other], c + oc, axis=1)
        elif kind == "split" and c >= 2:
            first = 1 + pick % (c - 1)
            sizes = b.name("sizes")
            b.inits.append(numpy_helper.from_array(np.array([first, c - first], np.int64), sizes))
            outs = [b.name("split"), b.name("split")]
            b.nodes.append(helper.make_node("Split", [x, sizes], outs, axis=1))
            b.tensors += [(outs[0], first), (outs[1], c - first)]
        elif kind == "pool":
            b.add("MaxPool", [x], c, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    # every tensor nobody reads feeds the head, so nothing dangles
    used = {i for n in b.nodes for i in n.input}
    ends = [(t, c) for t, c in b.tensors if t not in used and t != "input"] or [b.tensors[-1]]
    pooled = [b.add("GlobalAveragePool", [t], c) for t, c in ends]
    cat = pooled[0] if len(pooled) == 1 else b.add("Concat", pooled, sum(c for _, c in ends), axis=1)
    flat = b.add("Flatten", [cat], sum(c for _, c in ends), axis=1)
    w = b.weight((5, sum(c for _, c in ends)))
    b.nodes.append(helper.make_node("Gemm", [flat, w], ["output"], transB=1))
    graph = helper.make_graph(b.nodes, "random", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                  ["batch", 4, SIZE, SIZE])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 5])], b.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, seed=st.integers(0, 1000), ratio=st.floats(0.05, 0.9),
       criterion=st.sampled_from(["l1", "l2", "bn"]))
def test_random_dags_keep_the_invariant(steps, seed, ratio, criterion) -> None:
    proto = build(steps, seed)
    onnx.checker.check_model(proto)
    model = from_proto(proto)
    groups = find_groups(model)
    candidates = candidate_groups(model, groups, [])
    scores = {g.id: get_criterion(criterion)(model, g) for g in candidates}
    plan = Planner(model, groups, scores).plan({g.id: ratio for g in candidates})
    event(f"groups pruned: {min(len(plan.groups), 3)}+" if plan.groups else "nothing prunable")
    if any(g.compensations for g in candidates if g.id in plan.groups):
        event("bias compensation")
    sparse_model, slim_model = sparse(model, groups, plan), slim(model, groups, plan)
    onnx.checker.check_model(slim_model)
    x = {"input": np.random.default_rng(seed).standard_normal((2, 4, SIZE, SIZE)).astype(np.float32)}
    y_sparse = run_model(sparse_model, x)
    assert relative_difference(y_sparse, run_model(slim_model, x)) <= 1e-4
    dense = transform(from_proto(sparse_model), verify=False)
    assert relative_difference(y_sparse, run_model(dense.model, x)) <= 1e-4
    assert dense.plan.macs_after <= plan.macs_after
