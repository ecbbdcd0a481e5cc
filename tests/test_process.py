"""The process-wide settings `import onnxprune` makes: each only where the user has not set it."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import os, onnxprune; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"


def _probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "MALLOC_MMAP_THRESHOLD_")}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_settings_are_defaults_the_user_can_override() -> None:
    assert _probe() == "16"  # OpenBLAS threads sleep soon after a call
    assert _probe(OPENBLAS_THREAD_TIMEOUT="4") == "4"
    assert _probe(MALLOC_MMAP_THRESHOLD_="65536") == "16"  # the user's malloc setting is left alone
