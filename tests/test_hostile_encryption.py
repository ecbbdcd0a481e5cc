"""Hostile family: encryption. No plaintext outlives a killed decrypt past the next run, encrypt streams
(its memory does not grow with the model), keys that others can read are warned about."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from onnxprune.atomic import atomic_writer, remove_stale_temps
from onnxprune.secure import write_key_file
from tests.conftest import cli, fixture_path


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_next_run_removes_plaintext_left_by_a_killed_decrypt(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    write_key_file(key)
    assert cli("encrypt", fixture_path("plain_cnn"), "-o", tmp_path / "m.enc", "--key-file", key)[0] == 0
    left = tmp_path / f".plain.onnx.onnxprune-{dead_pid()}-abc123.tmp"  # what SIGKILL mid-decrypt leaves
    left.write_bytes(fixture_path("plain_cnn").read_bytes()[:1000])
    code, _, err = cli("decrypt", tmp_path / "m.enc", "-o", tmp_path / "plain.onnx", "--key-file", key)
    assert code == 0, err
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.key", "m.enc", "plain.onnx"]


def test_temps_of_live_writers_are_left_alone(tmp_path: Path) -> None:
    """A concurrent writer's temp file must survive another process's cleanup (the cache race)."""
    with atomic_writer(tmp_path / "a.json") as handle:
        handle.write(b"{}")
        ours = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert remove_stale_temps(tmp_path) == []
        assert all(p.exists() for p in ours) and len(ours) == 1
    assert (tmp_path / "a.json").read_bytes() == b"{}"


def big_model(path: Path, megabytes: int) -> None:
    values = np.random.default_rng(0).standard_normal(megabytes << 18).astype(np.float32)
    weight = numpy_helper.from_array(values.reshape(-1, 1024), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.dims[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1024])], [weight])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def peak_rss_mb(*args: str) -> float:
    """Peak resident memory of one CLI run (VmHWM: unlike ru_maxrss, not inherited from this process)."""
    code = ("import re, sys; from onnxprune.cli import main; rc = main(sys.argv[1:]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) / 1024); "
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def test_encrypt_memory_does_not_grow_with_the_model(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    write_key_file(key)
    big_model(tmp_path / "big.onnx", 96)
    small = peak_rss_mb("encrypt", str(fixture_path("plain_cnn")), "-o", str(tmp_path / "s.enc"), "--key-file", str(key))
    big = peak_rss_mb("encrypt", str(tmp_path / "big.onnx"), "-o", str(tmp_path / "b.enc"), "--key-file", str(key))
    assert big - small < 48, (small, big)  # a load of the model would add 96 MB or more


def test_a_key_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    write_key_file(key)
    key.chmod(0o644)
    code, _, err = cli("encrypt", fixture_path("plain_cnn"), "-o", tmp_path / "m.enc", "--key-file", key)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("onnxprune: warning:")]
    assert len(warnings) == 1 and "readable by others (mode 0644)" in warnings[0]
    key.chmod(0o600)
    code, _, err = cli("decrypt", tmp_path / "m.enc", "-o", tmp_path / "p.onnx", "--key-file", key)
    assert code == 0 and "warning" not in err


def test_stale_plaintext_is_removed_even_when_the_next_run_fails(tmp_path: Path) -> None:
    key, other = tmp_path / "k.key", tmp_path / "other.key"
    write_key_file(key)
    write_key_file(other)
    assert cli("encrypt", fixture_path("plain_cnn"), "-o", tmp_path / "m.enc", "--key-file", key)[0] == 0
    left = tmp_path / f".plain.onnx.onnxprune-{dead_pid()}-abc123.tmp"
    left.write_bytes(b"plaintext weights")
    assert cli("decrypt", tmp_path / "m.enc", "-o", tmp_path / "plain.onnx", "--key-file", other)[0] == 2
    assert not left.exists() and not (tmp_path / "plain.onnx").exists()
