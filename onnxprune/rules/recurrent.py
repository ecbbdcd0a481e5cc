"""Recurrent layers: LSTM and GRU, pruned along their hidden size.

A hidden unit h owns one row in every gate block of W [dirs, G*H, I], R [dirs, G*H, H] and of both halves
of B [dirs, 2*G*H] (LSTM: G = 4 gates i, o, f, c; GRU: G = 3 gates z, r, h), the same column h of R (the
state it feeds back), its slot in the initial states and its peepholes, and channel h of the outputs Y,
Y_h, Y_c: one bundle of size H ties them all, and Y's hidden axis carries the group onward.

Why it is exact: with the unit's rows and biases zeroed, its gate pre-activations are 0, so its candidate
is g(0) = tanh(0) = 0; from a zero initial state the cell (LSTM) and the state (GRU) stay 0 at every
step, so the unit's output is exactly 0 and its column of R reads zeros — the slim layer with H - k units
computes what the sparse one does. It needs candidate and output functions with f(0) = 0 (tanh, the
default; a model that sets others is refused) and initial states that are zero for removed units (a
constant is zeroed with the rows; one computed at run time is checked by the value analysis like any
reader, and a model input stops the group). Both directions of a bidirectional layer lose the same units:
they share Y's hidden axis.

The input features (W's axis 2) are an ordinary consumer axis, so the producer of X prunes too.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.rules.base import (
    AFFINE,
    IN,
    OUT,
    Bundle,
    Context,
    Port,
    Removed,
    Stop,
    Tie,
    present,
    tie,
    weight_role,
)

GATES = {"LSTM": 4, "GRU": 3}
# f(0) == 0: a zeroed unit's candidate (and LSTM output) function keeps it at zero
ZERO_AT_ZERO = {"Tanh", "Relu", "Softsign", "LeakyRelu", "ThresholdedRelu", "Elu", "ScaledTanh"}


def _blocks(blocks: int, hidden: int) -> np.ndarray:
    """(unit h, row g*H + h) for every gate block g."""
    h = np.arange(hidden)
    return np.concatenate([np.stack([h, g * hidden + h], axis=1) for g in range(blocks)])


def _input(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if index < len(node.inputs) and present(node.inputs[index]) else None


def _output(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.outputs[index] if index < len(node.outputs) and node.outputs[index].name else None


def _zero_keeping(node: gs.Node) -> str | None:
    """Why a zeroed unit would not stay zero under the node's activation functions, or None."""
    names = [str(a) for a in node.attrs.get("activations", [])]
    step = 3 if node.op == "LSTM" else 2
    kept = [n for i, n in enumerate(names) if i % step != 0]  # the candidate (and output) functions
    bad = [n for n in kept if n not in ZERO_AT_ZERO]
    return f"{node.op} '{node.name}' uses {bad[0]}, which is not 0 at 0" if bad else None


def _hidden_ties(node: gs.Node, gates: int, hidden: int) -> list[Tie]:
    w, r = node.inputs[1], node.inputs[2]
    ties = [Tie(w, 1, _blocks(gates, hidden), OUT), Tie(r, 1, _blocks(gates, hidden), OUT), tie(r, 2, hidden, IN)]
    bias = _input(node, 3)
    if bias is not None:
        ties.append(Tie(bias, 1, _blocks(2 * gates, hidden), weight_role(bias, OUT)))
    peepholes = _input(node, 7) if node.op == "LSTM" else None
    if peepholes is not None:
        ties.append(Tie(peepholes, 1, _blocks(3, hidden), weight_role(peepholes, AFFINE)))
    for index in (5, 6) if node.op == "LSTM" else (5,):  # initial_h, initial_c
        state = _input(node, index)
        if state is not None:
            ties.append(tie(state, 2, hidden, weight_role(state, AFFINE)))
    for index, axis in ((0, 3), (1, 2), (2, 2)):  # Y [T, dirs, B, H] or [B, T, dirs, H]; Y_h, Y_c
        out = _output(node, index)
        if out is not None:
            ties.append(tie(out, axis, hidden))
    return ties


def recurrent(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """LSTM / GRU: the hidden units (gate blocks of W, R, B, states, outputs) or the input features."""
    w, r = node.inputs[1], node.inputs[2]
    if not isinstance(w, gs.Constant) or not isinstance(r, gs.Constant):
        return Stop(f"{node.op} '{node.name}' has weights computed at run time")
    gates = GATES[node.op]
    _, rows, features = w.values.shape
    hidden = rows // gates
    tensor = port.tensor(node)
    x = node.inputs[0]
    if (tensor is x and axis == 2) or (tensor is w and axis == 2):
        return [Bundle(features, [tie(x, 2, features), tie(w, 2, features, IN)])]
    ties = _hidden_ties(node, gates, hidden)
    if not any(t.tensor is tensor and t.axis == axis for t in ties):
        return Stop(f"axis {axis} of '{tensor.name}' is not a hidden or input axis of {node.op} '{node.name}'")
    reason = _zero_keeping(node)
    if reason and not isinstance(tensor, gs.Constant):
        return Stop(reason)  # from the weights the group still forms, and stops here with the reason
    return [Bundle(hidden, ties)]


def fix_hidden_size(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """The `hidden_size` attribute follows R's (sliced) state axis."""
    if "hidden_size" in node.attrs:
        node.attrs["hidden_size"] = int(node.inputs[2].values.shape[2])


def recurrent_seeds(node: gs.Node) -> list[tuple[int, int]]:
    """W's gate rows: the hidden units."""
    return [(1, 1)]


def _recurrent_macs(gates: int, x: list[int], w: list[int]) -> int:
    """Per time step, every element of W once and every element of R [dirs, G*H, H] once (batch 1: the
    sequence length is the product of X's first two dims, whichever the layout)."""
    steps = x[0] * x[1]
    dirs, rows, features = w
    return steps * dirs * rows * (features + rows // gates)


def lstm_macs(x: list[int], w: list[int], y: list[int]) -> int:
    return _recurrent_macs(4, x, w)


def gru_macs(x: list[int], w: list[int], y: list[int]) -> int:
    return _recurrent_macs(3, x, w)


# --- ConstantOfShape: the zero initial states exporters build for the layers above --------------------


def filled(node: gs.Node, port: Port, axis: int, ctx: Context) -> list[Bundle] | Stop:
    """ConstantOfShape: an axis of its output is a channel axis filled with one value, when slim pruning
    can rewrite the size it reads (a constant shape, or a constant piece of the Concat that builds it)."""
    if port.is_input:
        return []  # the shape tensor's entries are not channels
    y = node.outputs[0]
    shape = ctx.shape(y)
    if shape is None:
        return Stop(f"shape of '{y.name}' is unknown")
    if _size_piece(node, axis, ctx) is None:
        return Stop(f"ConstantOfShape '{node.name}' takes its size on axis {axis} from data")
    return [Bundle(shape[axis], [tie(y, axis, shape[axis])])]


def _size_piece(node: gs.Node, axis: int, ctx: Context) -> tuple[gs.Node | None, int] | None:
    """Where the output's size on `axis` is written: (None, axis) in a constant shape, (Concat, input
    index) in a computed one; None when it comes from anything else."""
    target = node.inputs[0]
    if isinstance(target, gs.Constant):
        return None, axis
    concat = target.inputs[0] if target.inputs else None
    if concat is None or concat.op != "Concat" or len(concat.inputs) != len(ctx.shape(node.outputs[0]) or ()):
        return None
    piece = concat.inputs[axis]
    return (concat, axis) if isinstance(piece, gs.Constant) and piece.values.size == 1 else None


def fill_value(v: np.ndarray, node: gs.Node) -> np.ndarray:
    """The value ConstantOfShape writes (its `value` attribute, 0 by default) at every channel."""
    value = node.attrs.get("value")
    fill = float(np.asarray(value.values).reshape(-1)[0]) if isinstance(value, gs.Constant) else 0.0
    return np.full(v.shape, fill)


def fix_filled_shape(node: gs.Node, removed: Removed, ctx: Context) -> None:
    """Write the pruned sizes into the shape ConstantOfShape reads."""
    y = node.outputs[0]
    expected = ctx.shapes.get(y.name)
    old = removed.old_shapes.get(y.name)
    if expected is None or old is None or expected == old:
        return
    for axis in (a for a in range(len(old)) if old[a] != expected[a]):
        where = _size_piece(node, axis, ctx)
        if where is None:
            continue
        concat, index = where
        if concat is None:
            values = np.array(node.inputs[0].values, dtype=np.int64)
            values[index] = expected[axis]
            node.inputs[0] = gs.Constant(f"{y.name}_shape", values)
        else:
            shape = concat.inputs[index].values.shape
            concat.inputs[index] = gs.Constant(f"{y.name}_dim{index}", np.full(shape, expected[axis], np.int64))
