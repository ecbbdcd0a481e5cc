"""The README's first command at a reduced size: examples/ocr_direction/run.py's own functions (imported
from the file, not rewritten here) on the bundled PP-OCR text direction classifier, end to end."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("PIL", reason="the example renders lines with Pillow: pip install 'onnxprune[example]'")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ocr_direction"
MODEL_SHA256 = "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"  # as in model/NOTICE.md


@pytest.fixture(scope="module")
def example() -> ModuleType:
    """examples/ocr_direction/run.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("ocr_direction_run", EXAMPLE / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_bundled_model_is_the_wheels_file() -> None:
    model = EXAMPLE / "model" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    assert hashlib.sha256(model.read_bytes()).hexdigest() == MODEL_SHA256
    assert MODEL_SHA256 in (EXAMPLE / "model" / "NOTICE.md").read_text()


def test_lines_are_the_models_input_with_every_second_one_upside_down(example: ModuleType) -> None:
    x, labels = example.text_lines(6, seed=5)
    again, _ = example.text_lines(6, seed=5)
    assert x.shape == (6, 3, 48, 192) and x.dtype == np.float32
    assert np.array_equal(x, again)  # the same seed renders the same lines
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert x.min() >= -1 and x.max() <= 1 and np.all(x[:, 0] == x[:, 1])  # gray, scaled to [-1, 1]
    ink = (x[:, 0] < 0).sum(axis=(1, 2))
    assert np.all(ink > 50)  # text was drawn on every line


def test_without_the_dejavu_fonts_lines_use_pillows_own_font(example: ModuleType, monkeypatch, tmp_path,
                                                                  capsys) -> None:
    monkeypatch.setattr(example, "font_files", lambda: ())
    x, labels = example.write_lines(tmp_path, 2, 2, 1)
    assert "Pillow's built-in font" in capsys.readouterr().out
    assert x.shape == (2, 3, 48, 192) and labels.tolist() == [0, 1]
    assert np.all((x[:, 0] < 0).sum(axis=(1, 2)) > 20)
    with np.load(tmp_path / "calib.npz") as calib:
        assert sorted(calib.files) == ["x"]  # calibration lines carry no labels


def test_the_main_job_prunes_a_real_model_without_training(example: ModuleType, tmp_path: Path) -> None:
    """inspect, analyze (on 32 lines), prune 30% of MACs with reconstruction on 128 unlabeled lines,
    transform, encrypt: top-1 on 200 held-out lines stays within 3 points, the transformed and encrypted
    models score the same, and every file the README names is written."""
    argv = ["--calib", "128", "--analyze-lines", "32", "--held-out", "200", "--ratios", "0.3",
            "--analyze-ratios", "0.5", "--out", str(tmp_path)]
    assert example.main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    rows = {Path(row["file"]).name: row for row in report["rows"]}
    unpruned, pruned = rows["ch_ppocr_mobile_v2.0_cls_infer.onnx"], rows["pruned_30.onnx"]
    plain = rows["pruned_30_nodata.onnx"]
    dense, sealed = rows["dense.onnx"], rows["dense.onnx.enc"]
    assert unpruned["top1"] >= 0.97  # the model works on the rendered lines
    assert 0.29 <= 1 - pruned["macs"] / unpruned["macs"] <= 0.31
    assert pruned["top1"] >= unpruned["top1"] - 0.03
    assert plain["macs"] == pytest.approx(pruned["macs"], rel=0.02)
    assert plain["top1"] < pruned["top1"] - 0.1  # what the calibration data is for: without, the model breaks
    assert dense["macs"] == pruned["macs"] and dense["params"] == pruned["params"]  # transform removed all
    assert dense["top1"] == pruned["top1"] and sealed["top1"] == dense["top1"]
    assert report["chosen"].endswith("pruned_30.onnx")
    table = json.loads((tmp_path / "sens.json").read_text())
    assert table["metric"] == "fidelity" and len(table["groups"]) == 26
    assert all(set(row) == {"0.5"} for row in table["groups"].values())
    from onnxprune.secure import is_encrypted

    assert is_encrypted(tmp_path / "dense.onnx.enc") and not is_encrypted(tmp_path / "dense.onnx")
    written = ("calib.npz", "analyze.npz", "held_out.npz", "sens.csv", "pruned_30.onnx", "pruned_30.plan.json",
               "key")
    for name in written:
        assert (tmp_path / name).stat().st_size > 0, name
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("summary.png", "sensitivity.png"):
            assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
