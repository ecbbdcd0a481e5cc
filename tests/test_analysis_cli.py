"""`onnxprune analyze`: the SENS.json contract, CSV and plot, guideline warnings, and bad input as exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from onnxprune.cli import main
from tests.conftest import FIXTURES, fixture_path

DIGITS = str(fixture_path("digits_cnn"))
DIGITS_TEST = FIXTURES / "digits_test.npz"


def digits_arrays() -> dict[str, np.ndarray]:
    with np.load(DIGITS_TEST) as npz:
        return {name: npz[name] for name in npz.files}


def top1_eval(run, data) -> float:
    """A user metric: top-1 from `run` in two batches, to compare with the built-in one."""
    assert set(data) == {"input", "labels"}
    half = len(data["input"]) // 2
    correct = 0
    for part in (slice(0, half), slice(half, None)):
        outputs = run({"input": data["input"][part]})
        assert list(outputs) == ["output"]
        correct += int(np.sum(outputs["output"].argmax(1) == data["labels"][part]))
    return correct / len(data["labels"])


def constant_eval(run, data) -> float:
    run({"input": np.zeros((1, 1, 8, 8), np.float32)})
    return 0.5


def text_eval(run, data) -> str:
    return "high"


def misnamed_eval(run, data) -> float:
    run({"images": data["input"]})
    return 1.0


def test_analyze_writes_the_contract(tmp_path, capsys) -> None:
    out, png = tmp_path / "sens.json", tmp_path / "sens.png"
    args = ["analyze", DIGITS, "--data", str(DIGITS_TEST), "--ratios", "0.3,0.6", "--cache", str(tmp_path / "c"),
            "-o", str(out), "--plot", str(png), "--exact"]
    assert main(args) == 0
    captured = capsys.readouterr()
    table = json.loads(out.read_text())
    assert table["metric"] == "top1" and isinstance(table["baseline"], float)
    assert main(["inspect", DIGITS, "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert set(table["groups"]) == {g["id"] for g in inspected["groups"] if g["prunable"]}
    for gid, row in table["groups"].items():
        assert set(row) == {"0.3", "0.6"} and all(isinstance(v, float) for v in row.values())
        assert gid in captured.out
        assert table["group_info"][gid]["channels"] == next(g["channels"] for g in inspected["groups"]
                                                           if g["id"] == gid)
    rows = list(csv.DictReader((tmp_path / "sens.csv").open()))
    assert [r["group"] for r in rows] == list(table["groups"])
    assert float(rows[0]["0.6"]) == table["groups"][rows[0]["group"]]["0.6"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<=1%" in captured.out and "MACs" in captured.out
    assert "6 entries evaluated, 0 from the cache" in captured.err
    assert "6/6 entries" in captured.err  # the progress line at the end


def test_user_eval_equals_builtin_top1(tmp_path, capsys) -> None:
    base = ["analyze", DIGITS, "--data", str(DIGITS_TEST), "--ratios", "0.5", "--cache", str(tmp_path), "--exact"]
    assert main([*base, "-o", str(tmp_path / "builtin.json")]) == 0
    assert main([*base, "--eval", "tests.test_analysis_cli:top1_eval", "-o", str(tmp_path / "user.json")]) == 0
    builtin, user = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("builtin", "user"))
    assert user["metric"] == "eval:tests.test_analysis_cli:top1_eval"
    assert user["groups"] == builtin["groups"] and user["baseline"] == builtin["baseline"]


def test_guideline_warnings(tmp_path, capsys) -> None:
    arrays = digits_arrays()
    small = tmp_path / "small.npz"
    np.savez(small, input=arrays["input"][:100], labels=arrays["labels"][:100])
    assert main(["analyze", DIGITS, "--data", str(small), "--val", str(DIGITS_TEST), "--ratios", "0.2",
                 "--cache", str(tmp_path)]) == 0
    assert "less than half of the 450" in capsys.readouterr().err
    assert main(["analyze", DIGITS, "--data", str(DIGITS_TEST), "--eval", "tests.test_analysis_cli:constant_eval",
                 "--ratios", "0.2,0.8", "--cache", str(tmp_path)]) == 0
    assert "the metric is flat for 3 of 3 groups" in capsys.readouterr().err
    assert main(["analyze", DIGITS, "--ratios", "0.5", "--cache", str(tmp_path), "-o", str(tmp_path / "r.json")]) == 0
    assert "no --data" in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["metric"] == "fidelity"


def _bad_data(tmp_path, **changes) -> str:
    arrays = {**digits_arrays(), **changes}
    path = tmp_path / "bad.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return str(path)


BAD = {
    "wrong name": (lambda t: ["--data", _bad_data(t, input=None, images=digits_arrays()["input"])], "no array named"),
    "wrong dtype": (lambda t: ["--data", _bad_data(t, input=digits_arrays()["input"].astype(np.float64))],
                    "is float64, the model wants float32"),
    "wrong shape": (lambda t: ["--data", _bad_data(t, input=np.zeros((4, 1, 9, 9), np.float32), labels=None)],
                    "has shape [4, 1, 9, 9], the model wants [N,1,8,8]"),
    "bad labels": (lambda t: ["--data", _bad_data(t, labels=np.zeros(3, np.int64))], "'labels' must be"),
    "extra array": (lambda t: ["--data", _bad_data(t, boxes=np.zeros(3))], "neither model inputs"),
    "not npz": (lambda t: ["--data", DIGITS], "not a readable .npz"),
    "missing data": (lambda t: ["--data", str(t / "nope.npz")], "no such file"),
    "eval spec": (lambda t: ["--eval", "tests.test_analysis_cli"], "expected package.module:function"),
    "eval module": (lambda t: ["--eval", "no_such_module_xyz:f"], "cannot import"),
    "eval function": (lambda t: ["--eval", "tests.test_analysis_cli:missing"], "has no function"),
    "eval result": (lambda t: ["--eval", "tests.test_analysis_cli:text_eval"], "returned str, not a number"),
    "eval feeds": (lambda t: ["--data", str(DIGITS_TEST), "--eval", "tests.test_analysis_cli:misnamed_eval"],
                   "run() was given inputs ['images']; the model's inputs are ['input']"),
    "ratio range": (lambda t: ["--ratios", "0.5,1.0"], "--ratios: 1.0 is not in (0, 1)"),
    "ratio text": (lambda t: ["--ratios", "0.5,half"], "'half' is not a number"),
    "workers": (lambda t: ["--workers", "0"], "--workers 0 must be >= 1"),
    "criterion": (lambda t: ["--criterion", "l7"], "unknown criterion"),
    "top1 shape": (lambda t: ["--data", _bad_data(t, labels=np.zeros((450, 2), np.int64))], "top-1 needs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, case: str) -> None:
    extra, message = BAD[case]
    out = tmp_path / "out" / "sens.json"
    out.parent.mkdir()
    code = main(["analyze", DIGITS, "--cache", str(tmp_path / "cache"), "-o", str(out), "--plot",
                 str(tmp_path / "out" / "p.png"), *extra(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("onnxprune: error:") and message in err[-1], err
    assert not any(out.parent.iterdir())


def test_workers_and_ray_are_exclusive(capsys) -> None:
    assert main(["analyze", DIGITS, "--workers", "2", "--ray", "auto"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_plot_legend_sits_outside_and_names_groups_as_the_table(tmp_path) -> None:
    """60 groups with long exported names: the legend is right of the axes (it ran off the image inside
    them) and its ids are cut as the text table cuts them."""
    pytest.importorskip("matplotlib")
    from onnxprune.analysis.table import (
        SensitivityTable,
        display_id,
        format_table,
        plot_table,
        sensitivity_figure,
    )

    groups = {f"/model/encoder/layers.{i}/block/feed_forward/intermediate_dense/MatMul": {
        "0.1": 1 - 0.001 * i, "0.5": 1 - 0.01 * i} for i in range(60)}
    table = SensitivityTable("fidelity", 1.0, groups)
    fig, legend = sensitivity_figure(table)
    renderer = fig._get_renderer()
    axes_box, legend_box = fig.axes[0].get_window_extent(renderer), legend.get_window_extent(renderer)
    assert legend_box.x0 >= axes_box.x1
    labels = [t.get_text().split(" ", 1)[1] for t in legend.get_texts() if t.get_text().startswith("#")]
    assert labels and all(label in format_table(table) for label in labels)
    assert labels[0] == display_id("/model/encoder/layers.59/block/feed_forward/intermediate_dense/MatMul")
    plot_table(table, tmp_path / "sens.png")
    assert (tmp_path / "sens.png").read_bytes()[:4] == b"\x89PNG"
