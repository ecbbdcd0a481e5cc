"""Crash safety: SIGKILL `prune -o`, `transform`, `encrypt` and `decrypt` at random points. Afterwards the
output path holds the old file or a complete new one, and after the next run no temp file of ours (which
for decrypt holds plaintext) is left in the folder.

ONNXPRUNE_CRASH_KILLS sets the kills per command (default 3); the counts of each outcome are printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.secure import write_key_file
from tests.conftest import fixture_path
from tests.test_hostile_encryption import big_model

KILLS = int(os.environ.get("ONNXPRUNE_CRASH_KILLS", "3"))
OLD = b"the user's previous file"


def spawn(*args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnxprune", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run(*args: object) -> None:
    done = subprocess.run([sys.executable, "-m", "onnxprune", *map(str, args)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def state(output: Path, complete) -> str:
    """'old' when the previous file is intact, 'new' when a complete new one replaced it; else fail."""
    data = output.read_bytes()
    if data == OLD:
        return "old"
    assert complete(output), f"{output} is neither the old file nor a complete new one"
    return "new"


def loads(path: Path) -> bool:
    onnx.checker.check_model(onnx.load(path))
    return True


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("crash")
    key = folder / "k.key"
    write_key_file(key)
    big_model(folder / "big.onnx", 48)
    run("encrypt", folder / "big.onnx", "-o", folder / "big.enc", "--key-file", key)
    return {"folder": folder, "key": key}


def commands(setup: dict, out: Path) -> dict:
    folder, key = setup["folder"], setup["key"]
    plain = (folder / "big.onnx").read_bytes()

    def decrypted(path: Path) -> bool:
        return path.read_bytes() == plain

    def encrypted(path: Path) -> bool:
        check = out.parent / "check.onnx"
        run("decrypt", path, "-o", check, "--key-file", key)
        same = check.read_bytes() == plain
        check.unlink()
        return same

    return {
        "prune": (["prune", fixture_path("densenet"), "--ratio", "0.3", "-o", out], loads),
        "transform": (["transform", fixture_path("residual"), "-o", out], loads),
        "encrypt": (["encrypt", folder / "big.onnx", "-o", out, "--key-file", key], encrypted),
        "decrypt": (["decrypt", folder / "big.enc", "-o", out, "--key-file", key], decrypted),
    }


@pytest.mark.parametrize("command", ["prune", "transform", "encrypt", "decrypt"])
def test_sigkill_leaves_old_or_complete_new_and_no_temps(setup: dict, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out.onnx"
    args, complete = commands(setup, out)[command]
    started = time.monotonic()
    run(*args)  # one full run gives the time window the kills are spread over
    duration = time.monotonic() - started
    rng = np.random.default_rng(sum(map(ord, command)))
    seen: Counter[str] = Counter()
    for _ in range(KILLS):
        out.write_bytes(OLD)
        child = spawn(*args)
        time.sleep(float(rng.uniform(0.3, 1.0)) * duration)
        child.send_signal(signal.SIGKILL)
        child.wait()
        seen[state(out, complete)] += 1
    seen["temps left by kills"] = len(temps(tmp_path))
    run(*args)  # the next run: removes what the killed ones left
    assert temps(tmp_path) == []
    assert complete(out)
    print(f"{command}: {KILLS} kills in {duration:.1f} s windows: {dict(seen)}")
