"""The command line: contracts other tools script against, and bad input handled as one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from tests.conftest import fixture_path, run_model

MODEL = str(fixture_path("residual"))


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})


def test_inspect_json_contract(capsys) -> None:
    assert main(["inspect", MODEL, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report["macs"], int) and report["macs"] > 0
    assert isinstance(report["params"], int) and report["params"] == 38970
    ids = [g["id"] for g in report["groups"]]
    assert len(ids) == len(set(ids))
    for group in report["groups"]:
        assert set(group) >= {"id", "channels", "prunable", "reason", "members"}
        assert group["prunable"] == (group["reason"] is None)
        assert all(set(m) >= {"tensor", "axis"} for m in group["members"])
    assert any(g["prunable"] for g in report["groups"])
    assert any("model output" in (g["reason"] or "") for g in report["groups"])


def test_inspect_table(capsys) -> None:
    assert main(["inspect", str(fixture_path("groupnorm"))]) == 0
    text = capsys.readouterr().out
    assert "is a model output" in text and "prunable" in text and "total:" in text


def test_prune_writes_model_and_plan(tmp_path: Path) -> None:
    out, plan = tmp_path / "slim.onnx", tmp_path / "plan.json"
    result = run_cli("prune", MODEL, "--ratio", "0.5", "-o", str(out), "--plan-out", str(plan))
    assert result.returncode == 0, result.stderr
    onnx.checker.check_model(onnx.load(out))
    data = json.loads(plan.read_text())
    assert 0.49 <= 1 - data["macs_after"] / data["macs_before"] <= 0.54
    assert data["groups"] and all(g["removed"] for g in data["groups"].values())
    assert "verified" in result.stderr


def test_spec_and_exclude(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"/layer1/conv1/Conv": 0.5}))
    out = tmp_path / "out.onnx"
    assert main(["prune", MODEL, "--spec", str(spec), "-o", str(out), "--plan-out", str(tmp_path / "p.json")]) == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    assert list(plan["groups"]) == ["/layer1/conv1/Conv"] and len(plan["groups"]["/layer1/conv1/Conv"]["removed"]) == 8
    assert main(["prune", MODEL, "--ratio", "0.4", "--exclude", "/layer1/conv2/*", "-o", str(out),
                 "--plan-out", str(tmp_path / "p.json")]) == 0
    plan = json.loads((tmp_path / "p.json").read_text())
    assert "/layer1/conv1/Conv" not in plan["groups"]  # its channels feed /layer1/conv2/Conv


def test_sparse_then_transform_is_the_same_function(tmp_path: Path) -> None:
    sparse, dense = tmp_path / "sparse.onnx", tmp_path / "dense.onnx"
    assert main(["prune", str(fixture_path("densenet")), "--ratio", "0.5", "--mode", "sparse", "-o", str(sparse)]) == 0
    assert main(["transform", str(sparse), "-o", str(dense)]) == 0
    x = {"input": np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)}
    a, b = run_model(sparse, x)[0], run_model(dense, x)[0]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    assert dense.stat().st_size < 0.7 * sparse.stat().st_size


BAD_INPUTS = [
    (["prune", "missing.onnx", "--ratio", "0.5", "-o", "OUT"], "no such file"),
    (["prune", MODEL, "--ratio", "1.5", "-o", "OUT"], "not in (0, 1)"),
    (["prune", MODEL, "--ratio", "0", "-o", "OUT"], "not in (0, 1)"),
    (["prune", MODEL, "--spec", "SPEC_UNKNOWN", "-o", "OUT"], "unknown group"),
    (["prune", MODEL, "--spec", "SPEC_FIXED", "-o", "OUT"], "cannot be pruned"),
    (["prune", MODEL, "--ratio", "0.5", "--criterion", "magic", "-o", "OUT"], "unknown criterion"),
    (["prune", "EMPTY", "--ratio", "0.5", "-o", "OUT"], "empty"),
    (["prune", "TRUNCATED", "--ratio", "0.5", "-o", "OUT"], "not an ONNX model"),
    (["prune", "TEXT", "--ratio", "0.5", "-o", "OUT"], "not an ONNX model"),
    (["inspect", MODEL, "--input-shape", "nope:1,2"], "model's inputs are"),
    (["inspect", MODEL, "--input-shape", "input:1,3"], "does not fit"),
    (["prune", MODEL, "--ratio", "0.5", "-o", MODEL], "overwrite the input"),
    (["run", MODEL, "--data", "BADDATA"], "no array named"),
]


@pytest.mark.parametrize("argv,message", BAD_INPUTS)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    good = fixture_path("residual").read_bytes()
    files = {
        "EMPTY": b"", "TRUNCATED": good[: len(good) // 3], "TEXT": b"this is not a model\n" * 20,
        "SPEC_UNKNOWN": json.dumps({"no/such/group": 0.5}).encode(),
        "SPEC_FIXED": json.dumps({"/head/fc/Gemm": 0.5}).encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "BADDATA.npz", images=np.zeros((2, 3, 32, 32), np.float32))
    (tmp_path / "BADDATA").write_bytes((tmp_path / "BADDATA.npz").read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = [str(tmp_path / a) if a in files or a in ("OUT", "BADDATA") else a for a in argv]
    result = run_cli(*argv)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing lost
    assert fixture_path("residual").read_bytes() == good


def test_external_data_outside_folder_is_refused(tmp_path: Path) -> None:
    model = onnx.load(fixture_path("plain_cnn"))
    inner = tmp_path / "model"
    inner.mkdir()
    onnx.save(model, inner / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    assert main(["inspect", str(inner / "m.onnx")]) == 0
    (tmp_path / "outside.bin").write_bytes((inner / "w.bin").read_bytes())
    for location in ("../outside.bin", str(tmp_path / "outside.bin")):
        tampered = onnx.load(inner / "m.onnx", load_external_data=False)
        for t in tampered.graph.initializer:
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(tampered, inner / "bad.onnx")
        result = run_cli("inspect", str(inner / "bad.onnx"))
        assert result.returncode == 2 and "outside the model folder" in result.stderr
    (inner / "link.bin").symlink_to(tmp_path / "outside.bin")
    tampered = onnx.load(inner / "m.onnx", load_external_data=False)
    for t in tampered.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "link.bin"
    onnx.save(tampered, inner / "bad.onnx")
    result = run_cli("inspect", str(inner / "bad.onnx"))
    assert result.returncode == 2 and "outside the model folder" in result.stderr


def test_dynamic_spatial_dims_need_input_shape(tmp_path: Path) -> None:
    model = onnx.load(fixture_path("plain_cnn"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    onnx.save(model, tmp_path / "dyn.onnx")
    result = run_cli("inspect", str(tmp_path / "dyn.onnx"))
    assert result.returncode == 2 and "--input-shape input:" in result.stderr
    assert main(["prune", str(tmp_path / "dyn.onnx"), "--input-shape", "input:1,3,32,32", "--ratio", "0.5",
                 "-o", str(tmp_path / "out.onnx")]) == 0
    x = {"input": np.zeros((1, 3, 48, 48), np.float32)}  # dynamic dims survive pruning
    assert run_model(tmp_path / "out.onnx", x)[0].shape == (1, 10)


def test_encrypted_round_trip_through_cli(tmp_path: Path) -> None:
    key, sparse, enc, out = (tmp_path / n for n in ("k.key", "s.onnx", "d.enc", "y.npz"))
    assert main(["keygen", "-o", str(key)]) == 0
    assert key.stat().st_mode & 0o777 == 0o600
    assert main(["prune", str(fixture_path("c2f")), "--ratio", "0.4", "--mode", "sparse", "-o", str(sparse)]) == 0
    assert main(["transform", str(sparse), "-o", str(enc), "--encrypt", "--key-file", str(key)]) == 0
    np.savez(tmp_path / "x.npz", input=np.ones((2, 3, 32, 32), np.float32))
    assert main(["run", str(enc), "--key-file", str(key), "--data", str(tmp_path / "x.npz"), "-o", str(out)]) == 0
    expected = run_model(sparse, {"input": np.ones((2, 3, 32, 32), np.float32)})[0]
    got = np.load(out)["output"]
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    for argv in (["run", str(enc)], ["inspect", str(enc)], ["run", str(sparse), "--key-file", str(key)]):
        result = run_cli(*argv)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
