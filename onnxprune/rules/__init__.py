"""Per-operator channel rules: how a channel index on one tensor axis maps to the node's other tensors.

A rule answers one question: "channel axis `axis` of the tensor at `port` of `node` is being pruned —
which axes of the node's other tensors must lose the same channels?" It answers with `Bundle`s: a bundle
is an index space (for a Conv's output: its output channels) and the tensor axes tied to it, each with
the pairs (space index, index along that axis). A `Stop` says the axis cannot be pruned, and why.

Example (Conv with weight W [O, I, k, k] and bias B, arriving at output Y's axis 1):

    Bundle(O, [Tie(Y, 1, identity(O)), Tie(W, 0, identity(O), role=OUT), Tie(B, 0, identity(O), role=OUT)])

Roles of weights say what sparse pruning does with them: OUT and AFFINE slices are zeroed (they produce
the channel), IN slices (consumer weights) and KEEP slices (BN statistics, divisors) are left as they are;
slim pruning deletes every tied slice. CONTRACT ties two activations summed over in a MatMul; SUMMED an
activation a mean or normalization reduces over (its removed channels must be exact zeros there).

Each rule also names how the *value of a removed channel* flows through the node (`value`, see
`values.py`) and may have a `fixup` that rewrites attributes and shape inputs after slim pruning, or the
node itself into several (the exact LayerNorm of `norms.py`).
An operator without a rule stops every group that reaches it: unknown means unprunable, never guessed.

`RULES` is the operator registry: one `Rule` per operator type holds everything the project knows about
the operator — besides the channel rule, for layers with weights where groups start (`seeds`), their MACs,
their output-channel axis, whether analysis may mask their outputs, and their matrix form (`linear`,
`fold`; see `Rule`). The other modules ask `entry_for(node)`; none keeps its own list of operators. The
functions live by kind in `elementwise`, `weighted`, `linear`, `layout`, `spatial` and `norms`; `values` follows a
removed channel's value through the entries. A new operator is one entry here and one fixture (the
README's "Adding an operator" walks through one).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from onnxprune.rules.attention import expand, fix_expand, tile
from onnxprune.rules.base import (
    AFFINE,
    CONTRACT,
    IN,
    KEEP,
    OUT,
    SUMMED,
    WEIGHT_ROLES,
    ZEROED_ROLES,
    Bundle,
    Context,
    Port,
    Removed,
    Rule,
    Stop,
    Tie,
    Value,
)
from onnxprune.rules.elementwise import BINARY, UNARY, elementwise, passthrough
from onnxprune.rules.layout import (
    concat,
    fix_reshape,
    fix_slice,
    fix_split,
    reshape,
    shape_of,
    slice_,
    split,
    squeeze_like,
    transpose,
)
from onnxprune.rules.linear import LinearView, conv_fold, conv_view, gemm_fold, gemm_view, matmul_view
from onnxprune.rules.norms import (
    fix_group_norm,
    fix_layer_norm,
    fix_reduce_mean,
    fix_rms_norm,
    group_norm,
    grouped,
    layer_norm,
)
from onnxprune.rules.quantized import (
    dequantize_value,
    qdq,
    qlinear,
    qlinear_conv_macs,
    qlinear_conv_seeds,
    qlinear_matmul_macs,
    qlinear_matmul_seeds,
    quantize_value,
)
from onnxprune.rules.recurrent import (
    fill_value,
    filled,
    fix_filled_shape,
    fix_hidden_size,
    gru_macs,
    lstm_macs,
    recurrent,
    recurrent_seeds,
)
from onnxprune.rules.spatial import (
    fix_resize,
    normalized_from,
    reduce,
    softmax_axis,
    spatial,
)
from onnxprune.rules.weighted import (
    conv,
    conv_macs,
    conv_seeds,
    conv_transpose,
    conv_transpose_macs,
    conv_transpose_seeds,
    fix_conv_groups,
    gather,
    gather_seeds,
    gemm,
    gemm_macs,
    gemm_seeds,
    matmul,
    matmul_macs,
    matmul_seeds,
    normalization,
)

__all__ = [
    "AFFINE", "CONTRACT", "IN", "KEEP", "OUT", "RULES", "SUMMED", "WEIGHT_ROLES", "ZEROED_ROLES", "Bundle", "Context",
    "LinearView", "Port", "Removed", "Rule", "Stop", "Tie", "Value", "entry_for", "fold_view", "fused_rounding",
    "linear_view",
]


def _build_rules() -> dict[str, Rule]:
    rules: dict[str, Rule] = {}
    for op, fn in UNARY.items():
        rules[op] = Rule(passthrough, Value.UNARY, unary=fn)
    rules["PRelu"] = Rule(elementwise, Value.UNARY, unary=UNARY["PRelu"], zero_keeper=True, channelwise=True)
    for op in ("Add", "Sum", "Sub", "Max", "Min"):
        rules[op] = Rule(elementwise, Value.BINARY, binary=BINARY[op], zero_keeper=True, channelwise=True)
    rules["Mul"] = Rule(elementwise, Value.BINARY, binary=BINARY["Mul"], zero_maker=True, channelwise=True)
    rules["Div"] = Rule(elementwise, Value.BINARY, binary=BINARY["Div"])
    rules["Pow"] = Rule(elementwise, Value.BINARY, binary=BINARY["Pow"])
    rules["Where"] = Rule(elementwise, Value.UNKNOWN)
    rules["Conv"] = Rule(conv, Value.LINEAR, fixup=fix_conv_groups, seeds=conv_seeds, macs=conv_macs, out_axis=1,
                         zero_maker=True, linear=conv_view, fold=conv_fold)
    rules["ConvTranspose"] = Rule(conv_transpose, Value.LINEAR, fixup=fix_conv_groups, seeds=conv_transpose_seeds,
                                  macs=conv_transpose_macs, out_axis=1, zero_maker=True)
    rules["Gemm"] = Rule(gemm, Value.LINEAR, seeds=gemm_seeds, macs=gemm_macs, out_axis=1, zero_maker=True,
                         linear=gemm_view, fold=gemm_fold)
    rules["MatMul"] = Rule(matmul, Value.LINEAR, seeds=matmul_seeds, macs=matmul_macs, out_axis=-1, zero_maker=True,
                           linear=matmul_view)
    rules["BatchNormalization"] = Rule(normalization, Value.LINEAR, zero_maker=True, channelwise=True, scale_input=1)
    rules["InstanceNormalization"] = Rule(normalization, Value.LINEAR, zero_maker=True, channelwise=True)
    rules["Concat"] = Rule(concat, Value.COPY)
    rules["Split"] = Rule(split, Value.COPY, fixup=fix_split)
    rules["Slice"] = Rule(slice_, Value.COPY, fixup=fix_slice)
    rules["Transpose"] = Rule(transpose, Value.COPY)
    rules["Squeeze"] = Rule(squeeze_like, Value.COPY)
    rules["Unsqueeze"] = Rule(squeeze_like, Value.COPY)
    rules["Reshape"] = Rule(grouped(reshape), Value.COPY, fixup=fix_reshape)  # grouped: GroupNorm's rows
    rules["Flatten"] = Rule(reshape, Value.COPY)
    rules["Expand"] = Rule(expand, Value.COPY, fixup=fix_expand)
    rules["Tile"] = Rule(tile, Value.COPY)
    for op in ("MaxPool", "GlobalMaxPool", "GlobalAveragePool"):
        rules[op] = Rule(spatial, Value.COPY)
    for op in ("AveragePool", "LpPool", "GlobalLpPool", "Pad"):
        rules[op] = Rule(spatial, Value.ZERO)
    rules["Resize"] = Rule(spatial, Value.COPY, fixup=fix_resize)
    rules["Upsample"] = Rule(spatial, Value.COPY)
    rules["ReduceMean"] = Rule(reduce, Value.COPY, fixup=fix_reduce_mean)
    for op in ("ReduceMax", "ReduceMin"):
        rules[op] = Rule(reduce, Value.COPY)
    for op in ("ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "ReduceProd"):
        rules[op] = Rule(reduce, Value.ZERO)
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        rules[op] = Rule(normalized_from(softmax_axis), Value.UNKNOWN)
    rules["LayerNormalization"] = Rule(layer_norm, Value.NORMALIZED, fixup=fix_layer_norm)
    for op in ("RMSNormalization", "SimplifiedLayerNormalization"):  # the second: onnxruntime's, in domain ""
        rules[op] = Rule(layer_norm, Value.NORMALIZED, fixup=fix_rms_norm)
    rules["GroupNormalization"] = Rule(group_norm, Value.NORMALIZED, fixup=fix_group_norm)
    rules["Gather"] = Rule(gather, Value.LINEAR, seeds=gather_seeds)
    rules["Shape"] = Rule(shape_of)
    for op in ("Size", "NonZero"):
        rules[op] = Rule(lambda n, p, a, c: Stop(f"{n.op} '{n.name}' reads the channel count"))
    rules["ConstantOfShape"] = Rule(filled, Value.UNARY, unary=fill_value, fixup=fix_filled_shape)
    _quantized_and_recurrent(rules)
    return rules


def _quantized_and_recurrent(rules: dict[str, Rule]) -> None:
    """Q/DQ on activations (QDQ weights are lifted to floats at load), the QOperator layers (counted, not
    pruned) and LSTM/GRU (hidden units; masking their outputs would not zero the recurrence)."""
    rules["QuantizeLinear"] = Rule(qdq, Value.BINARY, binary=quantize_value, params=(), fused_rounding=True)
    rules["DequantizeLinear"] = Rule(qdq, Value.BINARY, binary=dequantize_value, params=(), fused_rounding=True)
    rules["QLinearConv"] = Rule(qlinear, seeds=qlinear_conv_seeds, macs=qlinear_conv_macs, weight_input=3,
                                params=(3, 8), out_axis=1)
    rules["QLinearMatMul"] = Rule(qlinear, seeds=qlinear_matmul_seeds, macs=qlinear_matmul_macs, weight_input=3,
                                  params=(3,), out_axis=-1)
    rules["LSTM"] = Rule(recurrent, Value.LINEAR, fixup=fix_hidden_size, seeds=recurrent_seeds, macs=lstm_macs,
                         out_axis=3)
    rules["GRU"] = Rule(recurrent, Value.LINEAR, fixup=fix_hidden_size, seeds=recurrent_seeds, macs=gru_macs,
                        out_axis=3)


RULES: dict[str, Rule] = _build_rules()


def entry_for(node: gs.Node) -> Rule | None:
    """The registry entry of a node's operator; None for operators of other domains or without one."""
    if (node.domain or "") not in ("", "ai.onnx"):
        return None
    return RULES.get(node.op)


def fused_rounding(graph: gs.Graph) -> bool:
    """True when onnxruntime's optimizations would run some node with kernels that round otherwise."""
    return any(rule.fused_rounding for rule in map(entry_for, graph.nodes) if rule is not None)


def linear_view(node: gs.Node) -> LinearView | None:
    """The node as a matrix product over one activation input, when its entry knows one (else None)."""
    rule = entry_for(node)
    return rule.linear(node) if rule is not None and rule.linear is not None else None


def fold_view(node: gs.Node) -> LinearView | None:
    """The node as a matrix product whose own bias takes constant input channels exactly (else None)."""
    rule = entry_for(node)
    return rule.fold(node) if rule is not None and rule.fold is not None else None
