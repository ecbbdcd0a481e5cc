"""Hostile family: malformed models. Each is refused with one line and exit 2 by `inspect` and `prune`
(never "internal error"), or handled: a model that is valid but unusual (an If subgraph) exits 0."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxprune.errors import OnnxPruneError
from tests.conftest import assert_refused, cli, fixture_path
from tests.hostile_models import BROKEN, bf16_model, if_model, nonzero_model


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_model_is_refused_by_inspect_and_prune(tmp_path: Path, case: str) -> None:
    breaker, words = BROKEN[case]
    proto = onnx.load(fixture_path("plain_cnn"))
    breaker(proto)
    path = tmp_path / "broken.onnx"
    path.write_bytes(proto.SerializeToString())
    assert_refused(cli("inspect", path), words)
    assert_refused(cli("prune", path, "--ratio", "0.3", "-o", tmp_path / "out.onnx"), words)
    assert not (tmp_path / "out.onnx").exists()


def test_bf16_graph_is_refused_when_it_must_run(tmp_path: Path) -> None:
    path = tmp_path / "bf16.onnx"
    path.write_bytes(bf16_model().SerializeToString())
    assert_refused(cli("prune", path, "--ratio", "0.3", "-o", tmp_path / "out.onnx"), "BFLOAT16")


def test_if_subgraph_reading_a_group_stops_that_group(tmp_path: Path) -> None:
    path = tmp_path / "if.onnx"
    path.write_bytes(if_model().SerializeToString())
    code, out, err = cli("inspect", path, "--json")
    assert code == 0, err
    reasons = [g["reason"] for g in json.loads(out)["groups"]]
    assert any("read inside a subgraph (Relu" in r or "read inside a subgraph (Sigmoid" in r for r in reasons)
    assert_refused(cli("prune", path, "--ratio", "0.3", "-o", tmp_path / "out.onnx"), "no prunable")


def test_input_shape_beyond_int64_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nz.onnx"
    path.write_bytes(nonzero_model(8).SerializeToString())
    assert_refused(cli("inspect", path, "--input-shape", "x:1,99999999999999999999999,4"), "--input-shape")


def test_shapes_needing_a_run_do_not_exhaust_memory(tmp_path: Path) -> None:
    """16384 x 16384 into NonZero: a run would need > 4 GB; inspect must stay small (shapes stay unknown)."""
    path = tmp_path / "nz.onnx"
    path.write_bytes(nonzero_model(16384).SerializeToString())
    code = ("import re, sys; from onnxprune.cli import main; rc = main(sys.argv[1:]); "
            "print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) // 1024); "
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, "inspect", str(path), "--input-shape", "x:1,16384,16384"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 2), done.stderr
    assert int(done.stdout.strip().splitlines()[-1]) < 600


def test_scrypt_refused_by_openssl_is_a_clear_error(monkeypatch) -> None:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    from onnxprune.secure.keys import derive_passphrase_key

    def refuse(self, data):
        raise MemoryError("Not enough memory to derive key")

    monkeypatch.setattr(Scrypt, "derive", refuse)
    with pytest.raises(OnnxPruneError, match=re.escape("scrypt n=1024 r=8 p=1: cannot derive")):
        derive_passphrase_key("p", b"s" * 16, 1024, 8, 1)
