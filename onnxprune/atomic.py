"""Atomic file writes: a failed command never leaves a half-written file or destroys the old one.

A temp file is named `.NAME.onnxprune-PID-RANDOM.tmp` beside its target. A process killed mid-write
(SIGKILL, power loss) cannot remove its own; the next write into that folder removes every temp of ours
whose process is gone, so a killed `decrypt` leaves its plaintext on disk only until the next run. Temps
of live processes are left alone: two commands writing into one folder never delete each other's files.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: int | None = None) -> Iterator[BinaryIO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on error remove it.
    The file gets `mode`, or by default what the umask gives any new file (the temp is 0600 meanwhile).

    Example:
        with atomic_writer("out.onnx") as f:
            f.write(data)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}{_TEMP_MARK}{os.getpid()}-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode if mode is not None else _created_mode())  # the temp was private while written
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _created_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0666 less the process's umask."""
    try:
        with open("/proc/self/status") as status:  # reads the umask without changing it (Linux)
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


_TEMP_MARK = ".onnxprune-"
_TEMP_NAME = re.compile(r"^\..*\.onnxprune-(\d+)-[^/]*\.tmp$")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete our temp files in `folder` whose writing process no longer runs; return what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            match = _TEMP_NAME.match(entry.name)
            if match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))
