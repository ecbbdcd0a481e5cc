"""Recovery without training: reconstruction is exact where it can be, keeps sparse == slim, and helps."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.pruning.prune import PruneOptions, prune
from onnxprune.pruning.surgery import sparse
from tests.conftest import (
    FIXTURE_NAMES,
    FIXTURES,
    MANIFEST,
    fixture_path,
    load_fixture,
    random_batch,
    relative_difference,
    run_model,
)

SHAPES = {entry["name"]: entry["input_shape"] for entry in MANIFEST}


def _calibration(name: str, samples: int = 48, seed: int = 7) -> dict[str, np.ndarray]:
    return {"input": random_batch(SHAPES[name], samples, seed=seed)}


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_sparse_equals_slim_after_reconstruction(name: str) -> None:
    options = PruneOptions(ratio=0.4, data=_calibration(name))  # the default with data: greedy choice
    slim_result = prune(load_fixture(name), options)
    sparse_result = prune(load_fixture(name), PruneOptions(**{**options.__dict__, "mode": "sparse"}))
    assert slim_result.plan.groups == sparse_result.plan.groups
    x = {"input": random_batch(SHAPES[name], 3, seed=11)}
    assert relative_difference(run_model(sparse_result.model, x), run_model(slim_result.model, x)) <= 1e-4
    fitted = sparse_result.reconstruction
    if any(f.how == "solved" for f in fitted.layers):  # reconstruction changed weights: compare not vacuous
        plain = prune(load_fixture(name), PruneOptions(ratio=0.4, data=_calibration(name),
                                                                      criterion="greedy", reconstruct=False, mode="sparse"))
        assert relative_difference(run_model(plain.model, x), run_model(sparse_result.model, x)) > 1e-4


def _two_convs(w1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> onnx.ModelProto:
    """x -> Conv1 (1x1, w1) -> Relu -> Conv2 (1x1, w2, b2) -> y."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"], name="conv2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 5, 5])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_exact_linear_combination_is_recovered(tmp_path) -> None:
    """Channel 5 of conv1 is a small combination of channels 0-2 on every input (non-negative, so Relu keeps it):
    removing it loses nothing once conv2 is re-solved, and reconstruction must find that to 1e-5."""
    rng = np.random.default_rng(0)
    base = np.abs(rng.standard_normal((5, 4))).astype(np.float32) + 0.5
    extra = (0.02 * base[0] + 0.01 * base[1] + 0.03 * base[2])[None]
    w1 = np.concatenate([base, extra]).reshape(6, 4, 1, 1).astype(np.float32)
    w2 = rng.standard_normal((3, 6, 1, 1)).astype(np.float32) + 2.0
    w2[:, 5] *= 0.3
    b2 = rng.standard_normal(3).astype(np.float32)
    path = tmp_path / "two_convs.onnx"
    onnx.save(_two_convs(w1, w2, b2), path)
    x = np.abs(rng.standard_normal((64, 4, 5, 5))).astype(np.float32)
    reference = run_model(path, {"x": x})
    model = onnxprune.load(path)
    result = prune(model, PruneOptions(spec={"conv1": 1 / 6}, data={"x": x}, criterion="l1", round_to=1,
                                       mode="sparse"))
    assert result.plan.groups["conv1"].removed == [5]  # the smallest L1 channel is the combination
    recovered = run_model(result.model, {"x": x})
    assert relative_difference(reference, recovered) <= 1e-5
    plain = prune(onnxprune.load(path), PruneOptions(spec={"conv1": 1 / 6}, round_to=1, mode="sparse"))
    assert relative_difference(reference, run_model(plain.model, {"x": x})) > 1e-3


def test_reconstruction_recovers_accuracy_on_digits() -> None:
    """The digits CNN at 50% of MACs removed: plain L1 loses half the test accuracy, reconstruction from
    unlabeled training images keeps it within 3 points (no training)."""
    train, test = np.load(FIXTURES / "digits_train.npz"), np.load(FIXTURES / "digits_test.npz")
    x_test, y_test = test["input"], test["labels"]

    def accuracy(proto: onnx.ModelProto) -> float:
        return float(np.mean(run_model(proto, {"input": x_test})[0].argmax(1) == y_test))

    baseline = accuracy(onnxprune.graph.model.with_weights(onnxprune.load(FIXTURES / "digits_cnn.onnx")))
    plain = prune(onnxprune.load(FIXTURES / "digits_cnn.onnx"), PruneOptions(ratio=0.5))
    fitted = prune(onnxprune.load(FIXTURES / "digits_cnn.onnx"),
                   PruneOptions(ratio=0.5, data={"input": train["input"][:256]}))
    assert accuracy(plain.model) < baseline - 0.2
    assert accuracy(fitted.model) > baseline - 0.03
    assert all(f.error_after <= f.error_before for f in fitted.reconstruction.layers)


def test_reconstructed_sparse_model_is_the_same_graph() -> None:
    path = fixture_path("residual")
    original = onnx.load(str(path))
    result = prune(onnxprune.load(path), PruneOptions(ratio=0.3, data=_calibration("residual"), mode="sparse"))
    assert [n.name for n in result.model.graph.node] == [n.name for n in original.graph.node]
    shapes = {t.name: list(t.dims) for t in original.graph.initializer}
    assert {t.name: list(t.dims) for t in result.model.graph.initializer} == shapes


def test_option_errors() -> None:
    model = onnxprune.load(fixture_path("plain_cnn"))
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        prune(model, PruneOptions(ratio=0.3, reconstruct=True))
    with pytest.raises(OnnxPruneError, match=r"criterion 'act' looks at activations: it needs calibration data \(data\)"):
        prune(model, PruneOptions(ratio=0.3, criterion="act"))
    with pytest.raises(OnnxPruneError, match="shape"):
        prune(model, PruneOptions(ratio=0.3, data={"input": np.zeros((4, 3, 8, 8), np.float32)}))
    with pytest.raises(OnnxPruneError, match="no array named"):
        prune(model, PruneOptions(ratio=0.3, data={"image": np.zeros((4, 3, 32, 32), np.float32)}))


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((4, 3, 32, 32), np.float32)}, "no array named 'input'"),
    ({"input": np.zeros((4, 3, 16, 16), np.float32)}, "has shape"),
    ({"input": np.zeros((4, 3, 32, 32), np.float64)}, "is float64"),
])
def test_cli_bad_data(tmp_path, capsys, arrays, message) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    code = main(["prune", str(fixture_path("plain_cnn")), "--ratio", "0.3", "--data", str(data), "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_prune_with_data(tmp_path, capsys) -> None:
    data = tmp_path / "calib.npz"
    np.savez(data, **_calibration("residual"))
    out = tmp_path / "slim.onnx"
    assert main(["prune", str(fixture_path("residual")), "--ratio", "0.4", "--data", str(data), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "reconstruction on 48 samples" in err and "verified" in err
    assert "choose channels [" in err and "reconstruct [" in err  # both long parts show their progress
    out2 = tmp_path / "plain.onnx"
    assert main(["prune", str(fixture_path("residual")), "--ratio", "0.4", "--data", str(data), "--no-reconstruct",
                 "-o", str(out2)]) == 0
    assert "reconstruction" not in capsys.readouterr().err
    x = {"input": random_batch(SHAPES["residual"], 2)}
    assert relative_difference(run_model(out, x), run_model(out2, x)) > 1e-4


def test_sparse_helper_unchanged_without_data() -> None:
    """Without data nothing new runs: the sparse model is the plain zeroed one."""
    model = onnxprune.load(fixture_path("plain_cnn"))
    result = prune(model, PruneOptions(ratio=0.3, mode="sparse"))
    assert result.reconstruction is None
    groups = onnxprune.find_groups(onnxprune.load(fixture_path("plain_cnn")))
    again = sparse(onnxprune.load(fixture_path("plain_cnn")), groups, result.plan)
    x = {"input": random_batch(SHAPES["plain_cnn"], 2)}
    assert relative_difference(run_model(result.model, x), run_model(again, x)) == 0.0


def test_iterate_without_training(tmp_path) -> None:
    """`[adapter] kind = "reconstruct"`: every round prunes and reconstructs on the calibration data, no
    training; the digits CNN reaches 60% of MACs removed in two rounds and keeps its test accuracy."""
    from onnxprune.loop.config import build_adapter, load_config
    from onnxprune.loop.iterate import run

    train = np.load(FIXTURES / "digits_train.npz")
    np.savez(tmp_path / "calib.npz", input=train["input"][:256])
    config_path = tmp_path / "run.toml"
    config_path.write_text(f'''
model = "{FIXTURES / 'digits_cnn.onnx'}"
output = "dense.onnx"
[schedule]
ratios = [0.3, 0.6]
tolerance = 0.1
[prune]
data = "calib.npz"
[adapter]
kind = "reconstruct"
''')
    config = load_config(config_path)
    assert config.prune.data == str(tmp_path / "calib.npz")
    result = run(config, build_adapter(config.adapter), tmp_path / "work", progress=lambda _: None)
    assert [r.accepted for r in result.rounds] == [True, True]
    assert result.macs_removed > 0.55
    test = np.load(FIXTURES / "digits_test.npz")
    dense = onnx.load(result.dense)
    accuracy = float(np.mean(run_model(dense, {"input": test["input"]})[0].argmax(1) == test["labels"]))
    assert accuracy > 0.95  # the baseline is 0.987; plain L1 at 50% keeps 0.48
    with pytest.raises(OnnxPruneError, match="needs \\[prune\\] data"):
        config_path.write_text(config_path.read_text().replace('data = "calib.npz"', ""))
        load_config(config_path)


def test_activations_spilled_to_disk_give_the_same_model() -> None:
    """A zero memory budget puts every kept activation in the temporary folder: same result, folder gone.
    (Up to float rounding: the budget also sets which layers the unpruned run takes in one onnxruntime
    session, and sessions of other node sets fuse differently, by about 3e-7 absolute on this fixture.)"""
    from onnxprune.recover.staged import ActivationStore

    def pruned(budget: int) -> onnx.ModelProto:
        return prune(onnxprune.load(fixture_path("residual")),
                     PruneOptions(ratio=0.4, data=_calibration("residual"), mode="sparse",
                                  activation_budget=budget)).model

    x = {"input": random_batch(SHAPES["residual"], 2)}
    assert relative_difference(run_model(pruned(1 << 29), x), run_model(pruned(0), x)) < 1e-5
    store = ActivationStore(0)
    store.put("t", 0, np.arange(3.0))
    folder = store._folder
    assert folder is not None and any(folder.iterdir())
    np.testing.assert_array_equal(store.get("t", 0), np.arange(3.0))
    store.close()
    assert not folder.exists()


def test_activation_files_are_written_over_once_dropped() -> None:
    """A dropped array's file takes the next array written, bigger or smaller, of another dtype or shape:
    each reads back exactly as it was put, and the folder holds no more files than arrays kept at once."""
    from onnxprune.recover.staged import ActivationStore

    rng = np.random.default_rng(0)
    store = ActivationStore(0)
    kept = {}
    for step, (size, dtype) in enumerate([(1000, np.float32), (10, np.float64), (5000, np.float32),
                                          (7, np.int64), (3000, np.float16), (1, np.float32)]):
        kept[step] = rng.standard_normal(size).astype(dtype).reshape(-1, 1) if size > 1 else np.ones((), dtype)
        store.put("t", step, kept[step])
        if step >= 2:  # two arrays live at once at most
            store.drop_one("t", step - 2)
            del kept[step - 2]
        for b, array in kept.items():
            read = store.get("t", b)
            assert read.dtype == array.dtype and read.shape == array.shape
            np.testing.assert_array_equal(read, array)
    assert len(list(store._folder.iterdir())) == 3
    store.close()


def _digits() -> tuple[onnxprune.Model, dict[str, np.ndarray]]:
    train = np.load(FIXTURES / "digits_train.npz")
    return onnxprune.load(FIXTURES / "digits_cnn.onnx"), {"input": train["input"][:256]}


def test_greedy_error_curve_matches_the_direct_measurement() -> None:
    """The greedy pass's error curve (what `allocation` reads) predicts what reconstruction leaves: pruning
    one group alone and reconstructing gives, at the layer reading it, the relative error the curve says
    at that ratio (digits CNN); the curve starts at no error and only grows."""
    from onnxprune.pruning.plan import candidate_groups
    from onnxprune.recover.calibration import calibration_batches
    from onnxprune.recover.greedy import greedy_scores

    model, data = _digits()
    groups = onnxprune.find_groups(model)
    choice = greedy_scores(model, candidate_groups(model, groups, []), calibration_batches(model, data))
    gid = "/features/features.3/Conv"
    curve = dict(choice.curves[gid])
    assert curve[0.0] == 0.0 and np.all(np.diff(list(curve.values())) >= 0)
    for ratio in (0.25, 0.5):  # 16 and 32 of 64 channels: points of the curve and aligned plans
        result = prune(onnxprune.load(FIXTURES / "digits_cnn.onnx"), PruneOptions(spec={gid: ratio}, data=data,
                                                                                   mode="sparse"))
        (fit,) = [f for f in result.reconstruction.layers if f.how == "solved"]
        assert abs(fit.error_after - np.sqrt(curve[ratio])) < 0.03
    assert curve[0.5] > 3 * curve[0.25]  # more removed, less recoverable


def test_default_allocation_prices_error_per_mac() -> None:
    """With data the default plan gives each group its own ratio by error per MAC removed (`allocation`):
    on the digits CNN the last conv's channels cost ~30x less error per MAC than the middle one's, so it
    loses more of them; `allocation="uniform"` gives every group the same fraction; both land on the
    target (channel by channel: `round_to=1`), and the slim model computes what the sparse one does (the
    check in `prune`)."""
    model, data = _digits()
    priced = prune(model, PruneOptions(ratio=0.5, data=data, round_to=1)).plan
    uniform = prune(_digits()[0], PruneOptions(ratio=0.5, data=data, round_to=1, allocation="uniform")).plan
    ratios = {gid: g.ratio for gid, g in priced.groups.items()}
    assert ratios["/features/features.6/Conv"] > ratios.get("/features/features.3/Conv", 0.0) + 0.1
    assert max(g.ratio for g in uniform.groups.values()) - min(g.ratio for g in uniform.groups.values()) < 0.1
    for plan in (priced, uniform):
        assert abs(plan.macs_ratio - 0.5) <= 0.01 and not plan.notes


def test_price_table_is_error_per_mac_at_the_margin() -> None:
    """`allocation.price_table`: each step's error per share of MACs removed, never falling along a row;
    a group whose curve is flat costs nothing, and with no curve at all allocation is uniform."""
    from onnxprune.pruning.channels import Group
    from onnxprune.pruning.plan import Planner, candidate_groups
    from onnxprune.recover.allocation import macs_per_ratio, price_table, reconstruction_ratios
    from onnxprune.recover.greedy import GreedyChoice

    model, _ = _digits()
    groups = onnxprune.find_groups(model)
    candidates: list[Group] = candidate_groups(model, groups, [])
    planner = Planner(model, groups, {g.id: np.arange(g.channels, dtype=float) for g in candidates})
    first, last = candidates[0].id, candidates[-1].id
    curves = {first: [(0.0, 0.0), (0.25, 0.1), (0.5, 0.15), (0.75, 0.6)], last: [(0.0, 0.0), (0.5, 0.0)]}
    table = price_table(GreedyChoice({}, curves), candidates, planner)
    scale = macs_per_ratio(planner, first)
    np.testing.assert_allclose([-table.groups[first][k] for k in ("0.25", "0.5", "0.75")],
                               [0.4 / scale, 0.4 / scale, 1.8 / scale])  # 0.2 per unit at 0.5: held at 0.4
    assert table.groups[last] == {"0.5": 0.0} and len(table.groups) == 2
    uniform = reconstruction_ratios(GreedyChoice({}, {}), candidates, planner)(0.3)
    assert set(uniform.values()) == {0.3}


def test_greedy_removes_a_channel_the_others_can_replace(tmp_path) -> None:
    """Channel 4 of conv1 is a big combination of channels 0-2; channel 3 is small but independent. L1
    removes channel 3, which nothing can replace; the greedy criterion removes one of 0, 1, 2, 4 (any of
    them is a combination of the other three), and reconstruction then recovers the output to 1e-5."""
    rng = np.random.default_rng(1)
    base = (2 * np.eye(4) + 0.1).astype(np.float32)  # positive, nearly orthogonal: Relu keeps all of it
    base[3] *= 0.5
    w1 = np.concatenate([base, (1.0 * base[0] + 0.8 * base[1] + 0.9 * base[2])[None]]).reshape(5, 4, 1, 1)
    w2 = rng.standard_normal((3, 5, 1, 1)).astype(np.float32) + 2.0
    w2[:, 3] *= 0.5
    path = tmp_path / "two_convs.onnx"
    onnx.save(_two_convs(w1.astype(np.float32), w2, rng.standard_normal(3).astype(np.float32)), path)
    x = np.abs(rng.standard_normal((64, 4, 5, 5))).astype(np.float32)
    reference = run_model(path, {"x": x})
    outcomes = {}
    for criterion in ("l1", "greedy"):
        options = PruneOptions(spec={"conv1": 1 / 5}, data={"x": x}, criterion=criterion, round_to=1, mode="sparse")
        result = prune(onnxprune.load(path), options)
        outcomes[criterion] = (result.plan.groups["conv1"].removed, relative_difference(reference, run_model(result.model, {"x": x})))
    assert outcomes["l1"][0] == [3] and outcomes["l1"][1] > 1e-3
    assert outcomes["greedy"][0][0] in (0, 1, 2, 4) and outcomes["greedy"][1] <= 1e-5


def test_greedy_order_is_a_permutation_and_needs_data() -> None:
    """The greedy scores rank every channel of every group a matrix layer reads, once each; without
    calibration data the criterion is refused with the usual error."""
    from onnxprune.pruning.channels import find_groups
    from onnxprune.recover.calibration import calibration_batches
    from onnxprune.recover.greedy import greedy_scores

    model = onnxprune.load(fixture_path("bottleneck"))
    groups = [g for g in find_groups(model) if g.prunable]
    scores = greedy_scores(model, groups, calibration_batches(model, _calibration("bottleneck"))).scores
    assert scores
    for gid, order in scores.items():
        channels = next(g.channels for g in groups if g.id == gid)
        assert sorted(order.tolist()) == list(range(channels))
    with pytest.raises(OnnxPruneError, match=r"needs calibration data \(data\)"):
        PruneOptions(ratio=0.3, criterion="greedy").check()


@pytest.mark.parametrize("dtype,rtol", [(np.float64, 1e-3), (np.float32, 2e-2)])
def test_greedy_cost_is_the_least_squares_residual(dtype: type, rtol: float) -> None:
    """The greedy cost of removing one channel (from H = (A'A)^-1, and after an update for a first removal)
    equals the residual of re-solving the layer without it, computed directly by least squares; also
    when A'A is float32 (big layers: inverted by float32 Cholesky)."""
    from onnxprune.recover.greedy import _reader, regularized_inverse

    rng = np.random.default_rng(3)
    a = np.concatenate([rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6)), np.ones((400, 1))], axis=1)
    w = rng.standard_normal((7, 3))
    gram = (a.T @ a).astype(dtype)
    reader = _reader(regularized_inverse(gram, len(gram) - 1), w, 1.0, np.array([0, 0, 1, 1, 2, 2, -1]), 3)

    def residual(kept: list[int]) -> float:
        solution = np.linalg.lstsq(a[:, kept], a @ w, rcond=None)[0]
        return float(np.sum((a[:, kept] @ solution - a @ w) ** 2))

    np.testing.assert_allclose(reader.costs(np.arange(3)), [residual([2, 3, 4, 5, 6]), residual([0, 1, 4, 5, 6]),
                                                            residual([0, 1, 2, 3, 6])], rtol=rtol)
    first = residual([2, 3, 4, 5, 6])
    np.testing.assert_allclose(reader.remove(np.array([0])), first, rtol=rtol)  # the error it adds
    np.testing.assert_allclose(reader.costs(np.array([1, 2])), [residual([4, 5, 6]) - first,
                                                                residual([2, 3, 6]) - first], rtol=rtol)


@pytest.mark.parametrize("sole", [False, True])
def test_greedy_removal_keeps_the_inverse_of_what_is_left(monkeypatch, sole: bool) -> None:
    """After each removal the reader's H, over the features left, is the inverse of A'A over them (the
    inverse of a principal block is the Schur complement). Each reader updates its block of the layer's H
    in place; once it is compacted, a reader that shares the layer's H copies out of it, and the sole
    reader of a layer writes its block (a view with longer rows: the column of ones is not the group's)
    over H's memory. Both a few rows at a time."""
    from onnxprune.recover import greedy
    from onnxprune.recover.lstsq import STABLE_RIDGE, add_ridge

    monkeypatch.setattr(greedy, "SHRINK_BYTES", 100)  # 1-2 rows per block: every block boundary is crossed
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.standard_normal((300, 16)), np.ones((300, 1))], axis=1)
    gram = a.T @ a
    channel_of_feature = np.append(np.repeat(np.arange(8), 2), -1)
    inverse = greedy.regularized_inverse(gram, 16)
    reader = greedy._reader(inverse, rng.standard_normal((17, 3)), 1.0, channel_of_feature, 8, sole)
    assert (reader.memory is not None) == sole
    regularized = add_ridge(gram.copy(), STABLE_RIDGE, 16)
    left = np.arange(16)
    sizes = []
    for channels in ([3], [0, 6], [5]):
        reader.remove(np.array(channels))
        left = left[~np.isin(left // 2, channels)]
        there = np.append(left, 16)  # the column of ones stays: H is the group's block of the whole inverse
        expected = np.linalg.inv(regularized[np.ix_(there, there)])[:-1, :-1]
        stored = reader.row[left]
        np.testing.assert_allclose(reader.inverse[np.ix_(stored, stored)], expected, rtol=1e-8, atol=1e-12)
        sizes.append(len(reader.inverse))
    assert sizes == [16, 10, 10]  # compacted once fewer than 3/4 of the rows are left (10 of 16, not 8 of 10)
    assert np.shares_memory(reader.inverse, inverse) == sole


def test_targets_kept_by_the_greedy_pass_replace_the_unpruned_run() -> None:
    """The greedy pass can keep reconstruction's targets (same rows, same unpruned outputs): reconstruction
    from them re-solves the layers as its own unpruned run does, and closing them removes their folder."""
    from onnxprune.pruning.channels import find_groups
    from onnxprune.pruning.plan import candidate_groups
    from onnxprune.pruning.prune import make_plan
    from onnxprune.recover.calibration import calibration_batches
    from onnxprune.recover.greedy import greedy_scores
    from onnxprune.recover.reconstruct import reconstruct
    from onnxprune.recover.targets import KeptTargets

    data, budget = _calibration("residual"), 1 << 20
    models = [onnxprune.load(fixture_path("residual")) for _ in range(2)]
    groups = [find_groups(m) for m in models]
    plan = make_plan(models[0], PruneOptions(ratio=0.4, data=data), groups[0])
    kept = KeptTargets()
    greedy_scores(models[0], candidate_groups(models[0], groups[0], []), calibration_batches(models[0], data),
                  budget=budget, targets=kept)
    folder = kept.store._folder
    assert folder is not None and any(folder.iterdir())
    fitted = reconstruct(models[0], groups[0], plan, calibration_batches(models[0], data), budget=budget // 2,
                         targets=kept)
    own = reconstruct(models[1], groups[1], plan, calibration_batches(models[1], data), budget=budget // 2)
    assert [f.how for f in fitted.layers] == [f.how for f in own.layers] and len(fitted.layers) >= 3
    np.testing.assert_allclose([f.error_after for f in fitted.layers], [f.error_after for f in own.layers], rtol=1e-3)
    for name in fitted.changed:
        a, b = models[0].weights()[name].values, models[1].weights()[name].values
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    kept.close()
    assert not folder.exists()


def test_greedy_pass_keeping_targets_sums_the_same_grams() -> None:
    """With targets kept, the greedy pass gathers each layer's rows once for both (float32, cast for a
    float64 gram): its A'A are those it sums without targets, to the last bit."""
    from onnxprune.pruning.channels import find_groups
    from onnxprune.recover.calibration import calibration_batches
    from onnxprune.recover.grams import input_grams, readers_of, reading_views
    from onnxprune.recover.targets import KeptTargets

    data = _calibration("residual")
    model = onnxprune.load(fixture_path("residual"))
    views = reading_views(model, set(readers_of(find_groups(model))))
    alone = [g for _, g in input_grams(model, calibration_batches(model, data), views)]
    with KeptTargets() as kept:
        shared = [g for _, g in input_grams(model, calibration_batches(model, data), views, targets=kept)]
        assert len(kept.by_position) == len(views) >= 3
    assert all(a.dtype == np.float64 and np.array_equal(a, b) for a, b in zip(alone, shared, strict=True))


def test_gram_summed_by_blocks_is_the_whole_product(monkeypatch) -> None:
    """A'A summed block by block on and below the diagonal, over two updates, then mirrored, is A'A."""
    from onnxprune.recover import lstsq

    monkeypatch.setattr(lstsq, "GRAM_BLOCK_BYTES", 2 * 7 * 8 * 3)  # 3 rows a block for n = 7: 3 blocks, the last short
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((2, 5, 7)), rng.standard_normal((2, 4, 7))
    gram = np.zeros((2, 7, 7))
    lstsq.add_gram(gram, a)
    lstsq.add_gram(gram, b)
    expected = a.transpose(0, 2, 1) @ a + b.transpose(0, 2, 1) @ b
    np.testing.assert_allclose(lstsq.mirror(gram), expected, rtol=1e-12, atol=1e-12)


def test_calibration_read_from_a_file_waits_on_disk(tmp_path) -> None:
    """Data read from an .npz is held in a temporary folder batch by batch (the same arrays), removed when
    the `with` ends; a caller's arrays are used as they are. Pruning from the file gives the same model."""
    from onnxprune.recover.calibration import SpilledBatches, calibration_batches, calibration_inputs

    model, data = load_fixture("residual"), _calibration("residual")
    np.savez(tmp_path / "calib.npz", **data)
    with calibration_inputs(model, tmp_path / "calib.npz") as spilled:
        assert isinstance(spilled, SpilledBatches)
        folder = spilled.store._folder
        in_memory = calibration_batches(model, data)
        assert len(spilled) == len(in_memory) > 1
        for b, feeds in enumerate(in_memory):
            np.testing.assert_array_equal(spilled[b]["input"], feeds["input"])
    assert folder is not None and not folder.exists()
    with calibration_inputs(model, data) as batches:
        assert isinstance(batches, list)
    from_file = prune(load_fixture("residual"), PruneOptions(ratio=0.4, data=tmp_path / "calib.npz", mode="sparse"))
    from_arrays = prune(load_fixture("residual"), PruneOptions(ratio=0.4, data=data, mode="sparse"))
    assert len(from_file.model.graph.initializer) == len(from_arrays.model.graph.initializer) > 0
    for a, b in zip(from_file.model.graph.initializer, from_arrays.model.graph.initializer):
        np.testing.assert_allclose(numpy_helper.to_array(a), numpy_helper.to_array(b), rtol=1e-5, atol=1e-6)
