"""`analyze --reconstruct`: each entry is measured with the layers reading the group re-solved, as
`prune --data` will compute them; the re-solve is the least-squares one."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.analysis.analyze import AnalyzeOptions, analyze
from onnxprune.analysis.table import SensitivityTable
from onnxprune.cli import main
from onnxprune.errors import OnnxPruneError
from onnxprune.pruning.channels import find_groups
from onnxprune.pruning.prune import PruneOptions, prune
from onnxprune.recover.lstsq import STABLE_RIDGE
from onnxprune.recover.resolve import resolved_readers


def _two_gemms(w1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> onnx.ModelProto:
    """x -> Gemm (w1) -> Relu -> Gemm (w2, b2) -> y."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, w1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, w2.shape[1]])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture
def redundant(tmp_path):
    """fc1 has 8 outputs from 6 positive inputs (positive weights, so Relu passes them), the last two positive
    combinations of the first six: a quarter of fc1 can go with nothing lost once fc2 is re-solved, and a lot
    is lost without."""
    rng = np.random.default_rng(3)
    base = np.abs(rng.standard_normal((6, 6))) + 0.2
    w1 = np.concatenate([base, base @ np.abs(rng.standard_normal((6, 2)))], axis=1).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    b2 = rng.standard_normal(3).astype(np.float32)
    path = tmp_path / "two_gemms.onnx"
    onnx.save(_two_gemms(w1, w2, b2), path)
    x = np.abs(rng.standard_normal((96, 6))).astype(np.float32)
    data = tmp_path / "calib.npz"
    np.savez(data, x=x)
    return path, data, x, (w1, w2, b2)


def _table(path, data, tmp_path, reconstruct: bool) -> dict[str, float]:
    options = AnalyzeOptions(data=str(data), ratios=[0.25], reconstruct=reconstruct, cache_dir=tmp_path / "c")
    table = analyze(onnxprune.load(path), options).table
    return table.groups["fc1"]


def test_entries_are_measured_after_re_solving(redundant, tmp_path) -> None:
    path, data, _, _ = redundant
    plain, solved = _table(path, data, tmp_path, False), _table(path, data, tmp_path, True)
    assert solved["0.25"] >= 0.998  # fidelity: the re-solved reader makes up for the removed quarter (up to the ridge)
    assert plain["0.25"] < 0.98


def test_readers_are_the_least_squares_solution(redundant) -> None:
    """The re-solved reader is the ridge least-squares fit to the unpruned outputs (the ridge pulls toward the
    weights it had, STABLE_RIDGE times the mean feature energy, none on the intercept): solved directly here."""
    path, _, x, (w1, w2, b2) = redundant
    model = onnxprune.load(path)
    groups = [g for g in find_groups(model) if g.id == "fc1"]
    removed = np.array([6, 7])
    resolved = resolved_readers(model, groups, {"fc1": {"0.25": removed}}, [{"x": x}])[("fc1", "0.25")]
    r = np.maximum(x @ w1, 0).astype(np.float64)
    kept = np.setdiff1d(np.arange(8), removed)
    a = np.concatenate([r[:, kept], np.ones((len(r), 1))], axis=1)
    target = r @ w2 + b2
    ridge = np.diag([STABLE_RIDGE * np.mean(np.sum(r**2, axis=0))] * kept.size + [0.0])
    start = np.concatenate([w2[kept], b2[None]])
    expected = np.linalg.solve(a.T @ a + ridge, a.T @ target + ridge @ start)
    np.testing.assert_allclose(resolved["w2"][kept], expected[:-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(resolved["b2"], expected[-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(resolved["w2"][removed], w2[removed])  # they multiply zeros: left as they were
    fitted, before = a @ expected, r[:, kept] @ w2[kept] + b2
    assert np.linalg.norm(fitted - target) < 0.01 * np.linalg.norm(before - target)  # not vacuous


def test_reconstruct_needs_data(redundant, capsys) -> None:
    path = redundant[0]
    with pytest.raises(OnnxPruneError, match="calibration data"):
        AnalyzeOptions(reconstruct=True).check()
    with pytest.raises(OnnxPruneError, match="calibration data"):
        AnalyzeOptions(criterion="greedy").check()
    assert main(["analyze", str(path), "--reconstruct"]) == 2
    assert "--reconstruct needs calibration data (--data" in capsys.readouterr().err


def test_the_table_says_how_it_was_measured_and_prune_warns_on_a_mismatch(redundant, tmp_path) -> None:
    path, data, _, _ = redundant
    options = AnalyzeOptions(data=str(data), ratios=[0.25, 0.5], reconstruct=True, cache_dir=tmp_path / "c")
    table = analyze(onnxprune.load(path), options).table
    assert (table.reconstruct, table.criterion) == (True, "greedy")
    again = SensitivityTable.from_dict(table.to_dict())
    assert (again.reconstruct, again.criterion) == (True, "greedy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measured as this prune prunes: no warning
        prune(onnxprune.load(path), PruneOptions(ratio=0.2, sensitivity=table, data=str(data), round_to=1))
    with pytest.warns(UserWarning, match="with reconstruction and this prune does not"):
        prune(onnxprune.load(path), PruneOptions(ratio=0.2, sensitivity=table, round_to=1))
    plain = analyze(onnxprune.load(path), AnalyzeOptions(data=str(data), ratios=[0.25, 0.5])).table
    with pytest.warns(UserWarning, match="analyze --reconstruct"):
        prune(onnxprune.load(path), PruneOptions(ratio=0.2, sensitivity=plain, data=str(data), round_to=1))


def test_agreement_counts_kept_decisions_not_confidence(tmp_path) -> None:
    """Agreement follows the arg-max decisions: a change that only sharpens or flattens the scores keeps
    it at 1 while fidelity drops; a change that flips decisions lowers it by the share flipped."""
    from onnxprune.analysis.metrics import Agreement, Fidelity, predictions
    from onnxprune.data import Dataset

    scores = np.random.default_rng(0).standard_normal((8, 5, 7))  # [N, T, C]: a sequence model's logits
    data = Dataset({"x": np.zeros((8, 1), np.float32)}, batch_size=4)
    agreement, fidelity = Agreement(data), Fidelity(data)
    batches = {k: scores[k * 4:(k + 1) * 4] for k in range(2)}
    for metric in (agreement, fidelity):
        metric.record(lambda feeds, key: {"y": batches[key]})
    sharper = {k: 3 * v for k, v in batches.items()}
    assert agreement(lambda feeds, key: {"y": sharper[key]}) == 1.0
    assert fidelity(lambda feeds, key: {"y": sharper[key]}) < 0
    flipped = {k: v.copy() for k, v in batches.items()}
    flipped[0][0, 0] = -flipped[0][0, 0]  # one of the 40 positions changes its arg-max (7 classes, N(0,1))
    changed = int((predictions(flipped[0]) != predictions(batches[0])).sum())
    assert changed == 1 and agreement(lambda feeds, key: {"y": flipped[key]}) == 1 - changed / 40
    assert predictions(np.zeros((2, 3, 4, 4))).shape == (2, 4, 4)  # [N, C, H, W]: the class axis is 1


def test_analyze_takes_agreement(redundant, tmp_path, capsys) -> None:
    path, data, _, _ = redundant
    table = analyze(onnxprune.load(path), AnalyzeOptions(data=str(data), ratios=[0.5], metric="agreement")).table
    assert table.metric == "agreement" and table.baseline == 1.0 and 0 <= table.groups["fc1"]["0.5"] <= 1
    with pytest.raises(OnnxPruneError, match="choose fidelity or agreement"):
        AnalyzeOptions(metric="top5").check()
    assert main(["analyze", str(path), "--data", str(data), "--metric", "agreement", "--ratios", "0.5",
                 "--cache", str(tmp_path / "c")]) == 0
    assert "agreement" in capsys.readouterr().out
