"""Fixtures written as ONNX graphs (onnx.helper), for patterns PyTorch's exporters do not write as such.

Each builder returns the model and a numpy reference of what it computes; make_fixtures.py checks the
model against the reference under onnxruntime, as it checks the PyTorch fixtures against PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

EPS = 1e-6


@dataclass(frozen=True)
class GraphFixture:
    name: str
    build: Callable[[], onnx.ModelProto]
    reference: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int, ...]
    description: str


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"w_in": (12, 32), "g1": (32,), "w1": (32, 64), "w2": (64, 32), "g2": (32,), "w_out": (32, 10)}
    weights = {k: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32) for k, s in shapes.items()}
    for k in ("g1", "g2"):
        weights[k] = (1 + 0.3 * rng.standard_normal(32)).astype(np.float32)
    return weights


def _rms(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * g


def rmsnorm_reference(x: np.ndarray) -> np.ndarray:
    w = _weights()
    h = x @ w["w_in"]
    a = _rms(h, w["g1"])
    h2 = h + np.maximum(a @ w["w1"], 0) @ w["w2"]
    return _rms(h2, w["g2"]) @ w["w_out"]


def _decomposed_rms(x: str, g: str, out: str, tag: str, reciprocal: bool) -> list[onnx.NodeProto]:
    """RMSNorm as exporters write it: Pow-ReduceMean-Add-Sqrt then Div (or Reciprocal-Mul), Mul(scale)."""
    nodes = [helper.make_node("Pow", [x, "two"], [f"{tag}_sq"], name=f"{tag}/Pow"),
             helper.make_node("ReduceMean", [f"{tag}_sq"], [f"{tag}_ms"], name=f"{tag}/ReduceMean", axes=[-1]),
             helper.make_node("Add", [f"{tag}_ms", "eps"], [f"{tag}_var"], name=f"{tag}/Add"),
             helper.make_node("Sqrt", [f"{tag}_var"], [f"{tag}_rms"], name=f"{tag}/Sqrt")]
    if reciprocal:
        nodes += [helper.make_node("Reciprocal", [f"{tag}_rms"], [f"{tag}_inv"], name=f"{tag}/Reciprocal"),
                  helper.make_node("Mul", [x, f"{tag}_inv"], [f"{tag}_n"], name=f"{tag}/Mul")]
    else:
        nodes.append(helper.make_node("Div", [x, f"{tag}_rms"], [f"{tag}_n"], name=f"{tag}/Div"))
    return [*nodes, helper.make_node("Mul", [f"{tag}_n", g], [out], name=f"{tag}/Scale")]


def _model(norms: list[onnx.NodeProto], extra: dict[str, np.ndarray], opset: int) -> onnx.ModelProto:
    """x -> MatMul -> norm1 -> MatMul-Relu-MatMul -> residual Add -> norm2 -> MatMul (the head)."""
    nodes = [helper.make_node("MatMul", ["input", "w_in"], ["h"], name="embed/MatMul"),
             *norms[: len(norms) // 2],
             helper.make_node("MatMul", ["a", "w1"], ["f1"], name="mlp/fc1/MatMul"),
             helper.make_node("Relu", ["f1"], ["f1r"], name="mlp/Relu"),
             helper.make_node("MatMul", ["f1r", "w2"], ["f2"], name="mlp/fc2/MatMul"),
             helper.make_node("Add", ["h", "f2"], ["h2"], name="residual/Add"),
             *norms[len(norms) // 2:],
             helper.make_node("MatMul", ["b", "w_out"], ["output"], name="head/MatMul")]
    inits = [numpy_helper.from_array(v, k) for k, v in {**_weights(), **extra}.items()]
    graph = helper.make_graph(nodes, "rmsnorm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 8, 12])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 8, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="onnxprune-fixtures")
    model.ir_version = 8 if opset < 21 else 10
    return model


def rmsnorm_decomposed() -> onnx.ModelProto:
    constants = {"two": np.array(2.0, np.float32), "eps": np.array(EPS, np.float32)}
    norms = _decomposed_rms("h", "g1", "a", "norm1", False) + _decomposed_rms("h2", "g2", "b", "norm2", True)
    return _model(norms, constants, 17)


def rmsnorm_fused() -> onnx.ModelProto:
    norms = [helper.make_node("RMSNormalization", ["h", "g1"], ["a"], name="norm1/RMSNormalization", axis=-1, epsilon=EPS),
             helper.make_node("RMSNormalization", ["h2", "g2"], ["b"], name="norm2/RMSNormalization", axis=-1, epsilon=EPS)]
    return _model(norms, {}, 23)


GRAPH_FIXTURES = [
    GraphFixture("rmsnorm", rmsnorm_decomposed, rmsnorm_reference, (1, 8, 12),
                 "RMSNorm as exported (Pow-ReduceMean-Add-Sqrt-Div-Mul, and -Reciprocal-Mul-Mul) around a ReLU "
                 "MLP with a residual add, MatMul embedding and head (hand-built, opset 17)."),
    GraphFixture("rmsnorm_fused", rmsnorm_fused, rmsnorm_reference, (1, 8, 12),
                 "The rmsnorm graph with fused RMSNormalization nodes (hand-built, opset 23)."),
]
