"""The one check that a command's output paths are safe to write: nothing the user had may be lost.

An output must not be an input of the same command (however it is spelled: another relative path, a
symlink, a hard link), must not be another output of the same command (a CSV twin, a plan, a data file),
and must not be a folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from onnxprune.errors import OnnxPruneError

PathLike = str | os.PathLike


def check_outputs(inputs: Iterable[PathLike | None], outputs: Iterable[PathLike | None]) -> None:
    """Refuse an output that is an input, repeats another output, is a folder or sits below a file."""
    sources = {_identity(Path(p)): Path(p) for p in inputs if p}
    written: dict[tuple, Path] = {}
    for out in (Path(p) for p in outputs if p):
        if out.is_dir():
            raise OnnxPruneError(f"{out}: output is a folder; give a file path")
        parent = out.parent
        if parent.exists() and not parent.is_dir():
            raise OnnxPruneError(f"{out}: output's folder {parent} is a file")
        key = _identity(out)
        if key in sources:
            raise OnnxPruneError(f"{out}: output would overwrite the input {sources[key]}; choose another path")
        if key in written:
            raise OnnxPruneError(f"{out}: written twice by this command (also as {written[key]}); choose another path")
        written[key] = out


def _identity(path: Path) -> tuple:
    """What names one file: its inode when it exists (sees through links), else its resolved path."""
    try:
        stat = path.stat()
    except OSError:
        return ("path", str(path.resolve()))
    return ("inode", stat.st_dev, stat.st_ino)
