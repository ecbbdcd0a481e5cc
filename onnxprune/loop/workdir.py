"""A run's work dir: every finished step of the loop is a file, written atomically.

A step is done when its JSON record exists; the record is written after the step's models, so a run
killed at any moment (SIGKILL included) leaves either a finished step or none, and the next run with the
same config picks up after the last finished one. A lock file keeps two runs out of one folder.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx

from onnxprune.atomic import write_bytes, write_text
from onnxprune.errors import OnnxPruneError, OptionError
from onnxprune.graph.load import read_proto
from onnxprune.graph.save import save

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock
    fcntl = None


class Workdir:
    """Files of one run, by path relative to the folder."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.root = Path(path)
        if self.root.exists() and not self.root.is_dir():
            raise OptionError(f"{{workdir}} {self.root}: exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / name

    def has(self, name: str) -> bool:
        return self.path(name).is_file()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for this process; a second run on it fails instead of mixing files."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path(".lock"), "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OptionError(f"{{workdir}} {self.root}: another run is using it") from None
            yield

    def begin(self, key: dict[str, Any]) -> bool:
        """Record the run's config, or check it against the recorded one; True when resuming."""
        key = json.loads(json.dumps(key))  # as it reads back: tuples become lists
        recorded = self.read_json("config.json")
        if recorded is None:
            self.write_json("config.json", key)
            return False
        if recorded != key:
            changed = sorted(k for k in set(recorded) | set(key) if recorded.get(k) != key.get(k))
            raise OptionError(f"{{workdir}} {self.root}: holds a run with another config ({', '.join(changed)} "
                                 "differ); use a new work dir or the same config")
        return True

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise OnnxPruneError(f"{path}: damaged checkpoint ({exc}); remove it to redo that step") from None

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_text(self.path(name), json.dumps(data, indent=1) + "\n")

    def read_model(self, name: str) -> onnx.ModelProto:
        return read_proto(self.path(name))

    def write_model(self, name: str, proto: onnx.ModelProto) -> None:
        self.path(name).parent.mkdir(parents=True, exist_ok=True)
        save(proto, self.path(name))

    def read_bytes(self, name: str) -> bytes:
        return self.path(name).read_bytes()

    def write_bytes(self, name: str, data: bytes) -> None:
        write_bytes(self.path(name), data)
