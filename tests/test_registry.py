"""The operator registry is the one place that knows operators: a new operator is one entry (and a fixture).

Two checks keep it so: every entry that makes a layer with weights carries all that layer needs (seeds,
MACs, output axis, mask mode), and no module outside `onnxprune/rules/` names an operator type, except
for the graph-loading and shape-arithmetic concerns listed in ALLOWED.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.rules import RULES, Value

PACKAGE = Path(__file__).resolve().parent.parent / "onnxprune"
OPERATORS = frozenset(schema.name for schema in onnx.defs.get_all_schemas())

ALLOWED = {
    # lifting weights out of Constant / Identity / Cast / layout nodes at load time; DequantizeLinear (and
    # a QuantizeLinear of a float weight before it): a QDQ model's weights lifted to floats at load, and
    # the DequantizeLinear written back by a slim model
    "graph/lift.py": {"Cast", "Constant", "DequantizeLinear", "Flatten", "Identity", "QuantizeLinear", "Reshape",
                      "Squeeze", "Transpose", "Unsqueeze"},
    "graph/check.py": {"Conv", "ConvTranspose"},  # the load-time check that a conv's weight fits its input
    "graph/model.py": {"Constant"},  # weights stored in Constant nodes
    "graph/shapes.py": None,  # the evaluator of shape arithmetic (Shape -> Gather -> Concat -> Reshape): any op
    "graph/split.py": {"Constant", "Mul"},  # it writes the mask nodes
    "graph/runtime.py": {"Identity"},  # a one-node probe model
}


def operator_names(source: str) -> set[str]:
    """String constants of a module's source that are ONNX operator types (`node.op == "Conv"`, op lists)."""
    return {node.value for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OPERATORS}


def strays(package: Path) -> dict[str, set[str]]:
    """Per module outside `rules/`, the operator types it names that ALLOWED does not grant it."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package).as_posix()
        if module.startswith("rules/"):
            continue
        allowed = ALLOWED.get(module, set())
        names = operator_names(path.read_text()) - (allowed if allowed is not None else OPERATORS)
        if names:
            found[module] = names
    return found


def test_no_module_outside_the_registry_names_an_operator() -> None:
    assert strays(PACKAGE) == {}, "operator knowledge belongs in the operator's registry entry (onnxprune/rules)"


def test_the_scan_finds_an_operator_list(tmp_path) -> None:
    """The check above can fail: an op comparison or an op table in a module is found."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "weighted.py").write_text('KIND = "Conv"\n')
    (tmp_path / "pruning").mkdir()
    (tmp_path / "graph").mkdir()
    (tmp_path / "pruning" / "cost.py").write_text('def macs(node):\n    return node.op == "Conv"\n')
    (tmp_path / "pruning" / "inspect.py").write_text('OUT = {"Gemm": 1, "weights": 2}\nTEXT = "Conv layers"\n')
    (tmp_path / "graph" / "split.py").write_text('MASK = "Mul"\nOTHER = "Add"\n')
    assert strays(tmp_path) == {"pruning/cost.py": {"Conv"}, "pruning/inspect.py": {"Gemm"}, "graph/split.py": {"Add"}}


WEIGHTED = sorted(op for op, rule in RULES.items() if rule.seeds is not None or rule.linear is not None)


def test_the_weighted_layers_are_the_expected_ones() -> None:
    assert WEIGHTED == ["Conv", "ConvTranspose", "GRU", "Gather", "Gemm", "LSTM", "MatMul", "QLinearConv",
                        "QLinearMatMul"]


NOT_MASKED = {"LSTM", "GRU"}  # masking Y would not zero the units' feedback through R: weights only
REFUSED = {"QLinearConv", "QLinearMatMul"}  # counted, never pruned: their groups stop with the reason


@pytest.mark.parametrize("op", WEIGHTED)
def test_a_layer_with_weights_has_a_complete_entry(op: str) -> None:
    """A layer that starts groups or has a matrix form is counted (MACs), shown (output axis) and masked
    by analysis (its zeroed weights give zero outputs); an embedding table (Gather) only starts groups;
    recurrent layers are analysed with zeroed weights; QOperator layers are counted, not pruned."""
    rule = RULES[op]
    assert rule.value is (Value.UNKNOWN if op in REFUSED else Value.LINEAR)
    if op == "Gather":
        return
    assert rule.seeds is not None and rule.macs is not None and rule.out_axis is not None, op
    assert rule.zero_maker is (op not in NOT_MASKED | REFUSED), op


@pytest.mark.parametrize("op", sorted(RULES))
def test_every_entry_is_consistent(op: str) -> None:
    rule = RULES[op]
    assert rule.fold is None or rule.linear is not None, "a bias fold is a matrix view"
    assert not rule.zero_keeper or rule.channelwise, "keeping zeros channel by channel"
    assert (rule.value is Value.UNARY) == (rule.unary is not None)
    assert (rule.value is Value.BINARY) == (rule.binary is not None)
    assert rule.scale_input is None or rule.channelwise


def test_isnan_keeps_unknown_values_unknown() -> None:
    """A removed channel's value through IsNaN: 0 -> False, 0.5 -> False, unknown (NaN) -> unknown."""
    values = RULES["IsNaN"].unary(np.array([0.0, 0.5, np.inf, np.nan]), None)
    assert np.array_equal(values, [0.0, 0.0, 0.0, np.nan], equal_nan=True)
