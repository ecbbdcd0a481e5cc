"""The unpruned walks over calibration data: windows of layers, and what a window's run hands over."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune.graph.model import to_proto
from onnxprune.recover.calibration import calibration_batches
from onnxprune.recover.grams import layer_sums, reading_views
from onnxprune.recover.staged import windows
from onnxprune.rules import linear_view
from tests.conftest import MANIFEST, load_fixture, random_batch, run_model

SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}


def test_windows_keep_order_and_budget() -> None:
    sizes = [3, 4, 2, 9, 1, 1]
    cut = windows(list(range(len(sizes))), lambda i: sizes[i], 7)
    assert cut == [[0, 1], [2], [3], [4, 5]]  # 3+4 fits 7; 9 is bigger than the budget: alone
    assert [i for run in cut for i in run] == list(range(len(sizes)))
    assert windows([], lambda i: 1, 7) == []


class _Kept:
    """Sums that keep every batch they are given."""

    def __init__(self) -> None:
        self.batches: list[np.ndarray] = []

    def add(self, x: np.ndarray) -> None:
        self.batches.append(x.copy())


@pytest.mark.parametrize("name", ["residual", "bottleneck"])
def test_every_window_size_hands_over_the_model_activations(name: str) -> None:
    """Whatever the windows (one layer each, or the whole model in one), each layer gets the activations
    the whole model computes at its input, batch by batch (to float32 rounding)."""
    model = load_fixture(name)
    data = {"input": random_batch(SHAPES[name], 10, seed=3)}
    views = reading_views(model, {v.weight.name for n in model.graph.nodes if (v := linear_view(n)) is not None
                                  and len(n.inputs) > 1})
    assert len(views) >= 3

    def inputs(budget: int) -> dict[str, list[np.ndarray]]:
        batches = calibration_batches(model, data)
        return {view.input.name: sums.batches
                for view, sums in layer_sums(model, batches, views, lambda _, view: _Kept(), lambda view: 1,
                                             budget=budget)}

    alone, together = inputs(0), inputs(1 << 30)
    proto = to_proto(model.graph, model.skeleton)
    names = [name for name in alone if name not in {i.name for i in proto.graph.input}]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    direct = dict(zip([o.name for o in proto.graph.output], run_model(proto, data)))
    for tensor in alone:
        assert len(alone[tensor]) == len(together[tensor]) >= 1
        # each window is its own onnxruntime session, whose fusions round differently
        np.testing.assert_allclose(np.concatenate(alone[tensor]), np.concatenate(together[tensor]), rtol=1e-5,
                                   atol=1e-6)
        expected = direct.get(tensor, data.get(tensor))
        np.testing.assert_allclose(np.concatenate(alone[tensor]), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("refused", [False, True])
def test_weights_handed_to_onnxruntime_give_the_same_activations(monkeypatch, refused: bool) -> None:
    """A stage's session takes its weights as arrays instead of in the model's bytes (`hand_over`), or,
    where onnxruntime refuses them, in the bytes as before: the model computes the same either way."""
    from onnxprune.graph import runtime
    from onnxprune.recover.staged import StagedRun

    monkeypatch.setattr(runtime, "HANDED_BYTES", 0)  # every weight of the fixture
    handed: list[int] = []
    real = runtime.session

    def session(*args, **kwargs):
        handed.append(len(kwargs.get("handed") or {}))
        if refused and kwargs.get("handed"):
            raise RuntimeError("this onnxruntime takes no external initializers")
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "session", session)
    model = load_fixture("bottleneck")
    data = {"input": random_batch(SHAPES["bottleneck"], 6, seed=4)}
    run = StagedRun(model, calibration_batches(model, data), 1 << 30)
    output, got = model.graph.outputs[0].name, []
    run.advance(len(model.graph.nodes), [output], lambda b, values: got.append(values[output]))
    assert max(handed) > 0, handed
    expected = run_model(to_proto(model.graph, model.skeleton), data)[0]
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-5, atol=1e-6)
