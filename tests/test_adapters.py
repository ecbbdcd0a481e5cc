"""Adapters: the PyTorch adapter round-trips names and masks, zeros survive training; the command adapter
runs a fake framework script and refuses what a framework must not return."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import torch

import onnxprune
from onnxprune.adapters import Adapter, MasksLostWarning, check_returned
from onnxprune.adapters.command import CommandAdapter
from onnxprune.adapters.torch import TorchAdapter
from onnxprune.errors import OnnxPruneError
from onnxprune.graph.load import from_proto
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.masks import Masks, masks_from_plan, weight_arrays
from onnxprune.pruning.prune import PruneOptions, make_plan
from onnxprune.pruning.surgery import slim, sparse
from onnxprune.pruning.transform import transform
from tests.conftest import fixture_path, run_model
from tools.fixture_models import FIXTURES, build_model


def _noisy_training(module: torch.nn.Module, settings: dict) -> None:
    """A few AdamW steps on random inputs, with a term that gives every weight element a gradient (a dead
    channel after a ReLU would get none from the data loss alone)."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(module.parameters(), lr=settings["lr"], weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(4, *settings["shape"][1:])
        optimizer.zero_grad()
        loss = (module(x) - 1).square().mean() + 1e-3 * sum(p.sum() for p in module.parameters())
        loss.backward()
        optimizer.step()


def _pruned(adapter: TorchAdapter, ratio: float = 0.4):
    model = from_proto(adapter.export())
    groups = find_groups(model)
    plan = make_plan(model, PruneOptions(ratio=ratio, mode="sparse"), groups)
    return model, groups, plan, sparse(model, groups, plan), masks_from_plan(model, groups, plan)


@pytest.mark.parametrize("name", ["residual", "mobilenet_se", "inception", "densenet"])
def test_torch_adapter_round_trips_names_and_masks(name: str) -> None:
    shape = FIXTURES[name].input_shape
    module = build_model(name)
    adapter = TorchAdapter(module, torch.zeros(shape), train=_noisy_training)
    assert isinstance(adapter, Adapter)
    exported = adapter.export()
    assert any(n.op_type == "BatchNormalization" for n in exported.graph.node), "BN must stay unfused"
    parameters = dict(module.named_parameters())
    stored = weight_arrays(exported)
    assert set(parameters) <= set(stored), "every parameter is an initializer of the same name"
    for pname, value in parameters.items():
        np.testing.assert_array_equal(stored[pname], value.detach().numpy())

    _, _, plan, sparse_model, masks = _pruned(adapter)
    assert masks.zero and set(masks.zero) <= set(parameters)
    values = weight_arrays(sparse_model)
    for wname, mask in masks.zero.items():
        assert mask.any() and not values[wname][mask].any()

    # loading the sparse model by name gives a module that computes what the sparse ONNX model computes
    adapter.load(sparse_model)
    x = np.random.default_rng(1).standard_normal((2, *shape[1:])).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    (actual,) = run_model(sparse_model, {"input": x})
    assert np.abs(expected - actual).max() <= 1e-4 * np.abs(actual).max()

    tuned = adapter.fine_tune(sparse_model, masks, {"lr": 0.05, "shape": shape})
    after = weight_arrays(tuned)
    assert set(after) == set(values)
    for wname, mask in masks.zero.items():
        assert not after[wname][mask].any(), f"{wname}: a masked element left zero during training"
        assert not np.array_equal(after[wname], values[wname]), f"{wname}: training changed nothing"
    # the fine-tuned model transforms to exactly the channels the plan removed
    dense = transform(from_proto(tuned))
    assert {gid: p.removed for gid, p in dense.plan.groups.items()} == {
        gid: p.removed for gid, p in plan.groups.items()}
    assert dense.plan.macs_after == plan.macs_after


def test_torch_adapter_handles_transposed_weights() -> None:
    """Linear on a 3-D input exports as Transpose(W) -> MatMul: masks come back in the stored layout."""
    shape = FIXTURES["transformer"].input_shape
    module = build_model("transformer")
    adapter = TorchAdapter(module, torch.zeros(shape), train=_noisy_training)
    model, _, _, sparse_model, masks = _pruned(adapter)
    assert model.derived, "the fixture should have weights behind a Transpose"
    sources = {how.source for how in model.derived.values()}
    assert sources & set(masks.zero)
    tuned = adapter.fine_tune(sparse_model, masks, {"lr": 0.05, "shape": shape})
    after = weight_arrays(tuned)
    for wname, mask in masks.zero.items():
        assert mask.shape == tuple(dict(module.named_parameters())[wname].shape)
        assert not after[wname][mask].any()


def test_torch_adapter_refuses_a_slim_model_and_foreign_masks() -> None:
    module = build_model("plain_cnn")
    adapter = TorchAdapter(module, torch.zeros(FIXTURES["plain_cnn"].input_shape), train=_noisy_training)
    model, groups, plan, _, _ = _pruned(adapter)
    with pytest.raises(OnnxPruneError, match="shape"):
        adapter.load(slim(model, groups, plan))
    with pytest.raises(OnnxPruneError, match="names no parameter"):
        adapter.fine_tune(adapter.export(), Masks({"not.a.weight": np.zeros(3, bool)}), {"lr": 0.1})
    with pytest.raises(OnnxPruneError, match="evaluate"):
        adapter.evaluate(adapter.export())


def test_torch_adapter_evaluates_the_given_model() -> None:
    module = build_model("plain_cnn")
    x = torch.randn(2, 3, 32, 32)
    adapter = TorchAdapter(module, torch.zeros(1, 3, 32, 32), train=_noisy_training,
                           evaluate=lambda m: float(m(x).sum()))
    baseline = adapter.export()
    _, _, _, sparse_model, _ = _pruned(adapter)
    before = adapter.evaluate(baseline)
    assert adapter.evaluate(sparse_model) != pytest.approx(before)
    assert adapter.evaluate(baseline) == pytest.approx(before)


def test_masks_npz_round_trip() -> None:
    masks = Masks({"a/b:c.weight": np.eye(3, dtype=bool), "onnx::Conv_7": np.array([True, False])})
    back = Masks.from_npz(masks.to_npz())
    assert set(back.zero) == set(masks.zero) and back.elements == 4
    for name in masks.zero:
        np.testing.assert_array_equal(back.zero[name], masks.zero[name])
    with pytest.raises(OnnxPruneError, match="not a masks file"):
        Masks.from_npz(b"garbage")


# --- the command adapter, with a fake framework script ------------------------------------------------

FAKE_FRAMEWORK = textwrap.dedent('''
    """A stand-in for a training framework: reads ONNX, 'trains', writes ONNX; or prints a metric."""
    import json, sys
    import numpy as np, onnx
    from onnx import numpy_helper

    mode = sys.argv[1]
    if mode == "eval":
        model = onnx.load(sys.argv[2])
        total = sum(float(np.abs(numpy_helper.to_array(t)).sum()) for t in model.graph.initializer)
        print("evaluating...")
        print(total)
        sys.exit(0)
    _, _, src, dst, masks_path, settings_path, lr, behaviour = sys.argv
    settings = json.load(open(settings_path))
    assert float(lr) == settings["lr"]
    masks = np.load(masks_path)
    model = onnx.load(src)
    if behaviour == "fail":
        sys.exit(3)
    if behaviour == "garbage":
        open(dst, "wb").write(b"not a model")
        sys.exit(0)
    if behaviour == "nothing":
        sys.exit(0)
    for init in model.graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype == np.float32:
            values = values + np.float32(lr)          # 'training' moves every weight, zeros included
            if behaviour == "keep" and init.name in masks.files:
                values[masks[init.name]] = 0
            init.CopyFrom(numpy_helper.from_array(values, init.name))
        if behaviour == "rename":
            init.name = init.name + "_renamed"
    onnx.save(model, dst)
''')


@pytest.fixture(scope="module")
def sparse_digits():
    model = onnxprune.load(fixture_path("digits_cnn"))
    groups = find_groups(model)
    plan = make_plan(model, PruneOptions(ratio=0.4, mode="sparse"), groups)
    return sparse(model, groups, plan), masks_from_plan(model, groups, plan)


def _command_adapter(tmp_path, behaviour: str) -> CommandAdapter:
    script = tmp_path / "framework.py"
    script.write_text(FAKE_FRAMEWORK)
    train = [sys.executable, str(script), "train", "{input}", "{output}", "{masks}", "{settings}", "{lr}", behaviour]
    return CommandAdapter(train, [sys.executable, str(script), "eval", "{input}"], cwd=tmp_path)


def test_command_adapter_fine_tunes_and_evaluates(tmp_path, sparse_digits) -> None:
    model, masks = sparse_digits
    adapter = _command_adapter(tmp_path, "keep")
    assert isinstance(adapter, Adapter)
    tuned = adapter.fine_tune(model, masks, {"lr": 0.25})
    before, after = weight_arrays(model), weight_arrays(tuned)
    unmasked = next(n for n in before if n not in masks.zero and before[n].dtype == np.float32)
    np.testing.assert_allclose(after[unmasked], before[unmasked] + 0.25)
    for name, mask in masks.zero.items():
        assert not after[name][mask].any()
    expected = sum(float(np.abs(v).sum()) for v in after.values() if v.dtype == np.float32)
    assert adapter.evaluate(tuned) == pytest.approx(expected, rel=1e-5)


def test_command_adapter_re_zeroes_lost_masks_with_a_warning(tmp_path, sparse_digits) -> None:
    model, masks = sparse_digits
    with pytest.warns(MasksLostWarning, match=f"{masks.elements} pruned weight values"):
        tuned = _command_adapter(tmp_path, "drift").fine_tune(model, masks, {"lr": 0.5})
    after = weight_arrays(tuned)
    for name, mask in masks.zero.items():
        assert not after[name][mask].any()
        assert (after[name][~mask] != weight_arrays(model)[name][~mask]).all()


@pytest.mark.parametrize("behaviour,message", [
    ("fail", "failed with exit code 3"),
    ("garbage", "not an ONNX model"),
    ("nothing", "wrote no model"),
    ("rename", "weight names differ"),
])
def test_command_adapter_refuses_bad_results(tmp_path, sparse_digits, behaviour: str, message: str) -> None:
    model, masks = sparse_digits
    with pytest.raises(OnnxPruneError, match=message) as info:
        _command_adapter(tmp_path, behaviour).fine_tune(model, masks, {"lr": 0.1})
    assert "\n" not in str(info.value)


def test_command_adapter_checks_its_commands(tmp_path, sparse_digits) -> None:
    model, masks = sparse_digits
    with pytest.raises(OnnxPruneError, match=r"must use the placeholder \{output\}"):
        CommandAdapter("train.sh {input}")
    with pytest.raises(OnnxPruneError, match=r"unknown placeholder \{epochs\}"):
        CommandAdapter("true {input} {output} {epochs}").fine_tune(model, masks, {"lr": 1})
    with pytest.raises(OnnxPruneError, match="not found"):
        CommandAdapter("no-such-program-here {input} {output}").fine_tune(model, masks, {})
    with pytest.raises(OnnxPruneError, match="no evaluate command"):
        CommandAdapter("true {input} {output}").evaluate(model)
    printer = CommandAdapter("true {input} {output}", [sys.executable, "-c", "print('accuracy: high')", "{input}"])
    with pytest.raises(OnnxPruneError, match="no number"):
        printer.evaluate(model)


def test_check_returned_refuses_other_shapes(sparse_digits) -> None:
    model, masks = sparse_digits
    other = onnx.ModelProto()
    other.CopyFrom(model)
    first = other.graph.initializer[0]
    first.CopyFrom(onnx.numpy_helper.from_array(np.zeros((1, 1), np.float32), first.name))
    with pytest.raises(OnnxPruneError, match=f"weight '{first.name}' has shape"):
        check_returned(model, other, masks)


def test_without_torch_only_the_torch_adapter_is_unavailable() -> None:
    code = textwrap.dedent("""
        import sys
        sys.modules["torch"] = None  # as if torch were not installed
        import onnxprune.adapters.command, onnxprune.loop.iterate, onnxprune.cli
        from onnxprune.errors import OnnxPruneError
        try:
            import onnxprune.adapters.torch
        except OnnxPruneError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'onnxprune[torch]'" in done.stdout
