"""Hostile family: the command adapter. A command that times out is killed with everything it started;
a missing working folder is named as such."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import onnx
import pytest

from onnxprune.adapters.command import CommandAdapter
from onnxprune.errors import OnnxPruneError
from tests.conftest import fixture_path

SPAWNER = """
import subprocess, sys, time
for _ in range(2):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", sys.argv[2]])
time.sleep(60)
"""


def processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and token in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.timeout(60)
def test_timeout_kills_the_commands_children(tmp_path: Path) -> None:
    token = f"onnxprune-test-{uuid.uuid4().hex}"
    script = tmp_path / "spawn.py"
    script.write_text(SPAWNER)
    adapter = CommandAdapter("true {input} {output}", [sys.executable, str(script), "{input}", token], timeout=2)
    with pytest.raises(OnnxPruneError, match="ran longer than 2 s"):
        adapter.evaluate(onnx.load(fixture_path("plain_cnn")))
    deadline = time.monotonic() + 5
    while processes_with(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(token) == []


def test_missing_working_folder_is_named(tmp_path: Path) -> None:
    adapter = CommandAdapter("python3 {input} {output}", "python3 {input}", cwd=tmp_path / "missing")
    with pytest.raises(OnnxPruneError, match="working folder .*missing does not exist"):
        adapter.evaluate(onnx.load(fixture_path("plain_cnn")))
