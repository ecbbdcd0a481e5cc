"""Broken models built from the fixtures: the seed corpus of issue 13's malformed-model cases.

Each case is a function ModelProto -> None that breaks a copy of `plain_cnn` in one way; the fuzz suite
starts from the same cases.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _cycle(p: onnx.ModelProto) -> None:
    p.graph.node[0].input[0] = p.graph.node[3].output[0]


def _duplicate_output(p: onnx.ModelProto) -> None:
    p.graph.node[2].output[0] = p.graph.node[1].output[0]


def _short_initializer(p: onnx.ModelProto) -> None:
    p.graph.initializer[0].raw_data = p.graph.initializer[0].raw_data[:-4]


def _long_initializer(p: onnx.ModelProto) -> None:
    p.graph.initializer[0].raw_data += b"\0" * 8


def _negative_dim(p: onnx.ModelProto) -> None:
    p.graph.initializer[0].dims[0] = -p.graph.initializer[0].dims[0]


def _no_producer(p: onnx.ModelProto) -> None:
    p.graph.node[1].input[0] = "nobody"


def _conv_channels(p: onnx.ModelProto) -> None:
    weight = p.graph.initializer[0]
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight)[:, :2].copy(), weight.name))


def _ir_too_new(p: onnx.ModelProto) -> None:
    p.ir_version = 99


def _opset_too_new(p: onnx.ModelProto) -> None:
    p.opset_import[0].version = 40


def _sparse_initializer(p: onnx.ModelProto) -> None:
    weight = p.graph.initializer[0]
    values = numpy_helper.to_array(weight)
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(values.reshape(-1), weight.name),
                                       numpy_helper.from_array(np.arange(values.size, dtype=np.int64), "i"),
                                       list(values.shape))
    del p.graph.initializer[0]
    p.graph.sparse_initializer.append(sparse)


def _huge_declared_dim(p: onnx.ModelProto) -> None:
    p.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1 << 40


BROKEN: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "cycle": (_cycle, "cycle"),
    "duplicate output": (_duplicate_output, "produced twice"),
    "short initializer": (_short_initializer, "holds 1724 bytes"),
    "long initializer": (_long_initializer, "holds 1736 bytes"),
    "negative dim": (_negative_dim, "negative dimension"),
    "no producer": (_no_producer, "which nothing produces"),
    "conv channels": (_conv_channels, "reads 3 channels"),
    "IR too new": (_ir_too_new, "IR version 99"),
    "opset too new": (_opset_too_new, "cannot load"),
    "sparse initializer": (_sparse_initializer, "sparse initializer"),
    "huge declared dim": (_huge_declared_dim, "over 2147483647"),
}


def bf16_model() -> onnx.ModelProto:
    """Conv -> Relu -> Conv, every tensor bfloat16 (onnxruntime's CPU cannot run it, numpy has no type)."""
    def weight(name: str, shape: list[int]) -> TensorProto:
        return helper.make_tensor(name, TensorProto.BFLOAT16, shape,
                                  np.full(int(np.prod(shape)), 0x3F80, dtype=np.uint16).tobytes(), raw=True)

    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.BFLOAT16, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.BFLOAT16, [1, 4, 8, 8])],
                              [weight("w", [8, 3, 3, 3]), weight("w2", [4, 8, 1, 1])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def if_model() -> onnx.ModelProto:
    """Conv -> If(Relu | Sigmoid of the Conv's output, read from the outer scope) -> Conv."""
    rng = np.random.default_rng(0)

    def branch(op: str, name: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["a"], [f"b_{name}"])], name, [],
                                 [helper.make_tensor_value_info(f"b_{name}", TensorProto.FLOAT, [1, 8, 8, 8])])

    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("If", ["cond"], ["b"], then_branch=branch("Relu", "t"), else_branch=branch("Sigmoid", "e")),
             helper.make_node("Conv", ["b", "w2"], ["y"])]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array(True), "cond")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def nonzero_model(side: int) -> onnx.ModelProto:
    """x [1, side, side] -> NonZero: its shape is only known by running it, which needs rank x size memory."""
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Shape", ["nz"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
