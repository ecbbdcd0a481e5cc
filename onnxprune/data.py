"""Data files: `.npz` archives whose arrays are named after the model's inputs (plus optional `labels`),
and the JSON files users hand in (specs, sensitivity tables)."""

from __future__ import annotations

import io as _io
import json
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune.atomic import write_bytes
from onnxprune.errors import OnnxPruneError, first_line

_NUMPY_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass
class Dataset:
    """Model inputs by name (first axis = samples) and, when the file has them, labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))


MAX_JSON_BYTES = 64 << 20  # far above any spec, table or cache; a bound so /dev/zero cannot fill memory


def read_bounded(path: str | os.PathLike, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; anything else is refused in one line.

    Opened without blocking, so a FIFO cannot hang the process, and checked on the open descriptor, so a
    symlink to a device or a folder is refused whatever it points at.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise OnnxPruneError(f"{path}: no such file") from None
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OnnxPruneError(f"{path}: the {what} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OnnxPruneError(f"{path}: the {what} is larger than {limit >> 20} MB")
    return data


def parse_json(data: bytes, where: str, what: str) -> object:
    """JSON from bytes; malformed or absurdly nested input is the user's error, said in one line."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"{where}: not a JSON {what} ({str(exc)[:200]})") from None
    except RecursionError:
        raise OnnxPruneError(f"{where}: not a JSON {what} (nested too deeply)") from None


def read_json(path: str | Path, what: str) -> object:
    """A JSON file's content; a missing, special or malformed file is the user's error, said in one line."""
    return parse_json(read_bounded(path, MAX_JSON_BYTES, what), str(path), what)


def check_regular(path: str | os.PathLike, what: str) -> None:
    """Refuse a path that is not a regular file (a folder, a FIFO that would hang a reader, a device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise OnnxPruneError(f"{path}: no such file") from None
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise OnnxPruneError(f"{path}: the {what} is not a regular file")


def read_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; object arrays (pickles, which could run code) are refused."""
    check_regular(path, "data file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError:
        raise OnnxPruneError(f"{path}: no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise OnnxPruneError(f"{path}: not a readable .npz of plain arrays ({first_line(exc, 200)})") \
            from None


def read_feeds(path: str | Path, inputs: list[ort.NodeArg]) -> Dataset:
    """Read and check a data file against a session's inputs (names, ranks, fixed dims, dtypes)."""
    arrays = read_arrays(path)
    labels = arrays.pop("labels", None)
    expected = {i.name for i in inputs}
    missing, extra = expected - set(arrays), set(arrays) - expected
    if missing:
        raise OnnxPruneError(f"{path}: no array for model input(s) {sorted(missing)}; arrays are {sorted(arrays)}")
    if extra:
        raise OnnxPruneError(f"{path}: arrays {sorted(extra)} are not model inputs ({sorted(expected)}) or 'labels'")
    feeds = {}
    for inp in inputs:
        array = arrays[inp.name]
        want = _NUMPY_TYPES.get(inp.type)
        if want is not None and array.dtype != want:
            if not np.can_cast(array.dtype, want, casting="same_kind"):
                raise OnnxPruneError(f"{path}: array {inp.name!r} is {array.dtype}, the model wants {inp.type}")
            array = array.astype(want)
        if array.ndim != len(inp.shape) or any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(inp.shape[1:], array.shape[1:])
        ):
            raise OnnxPruneError(f"{path}: array {inp.name!r} has shape {list(array.shape)}, the model wants {inp.shape}")
        feeds[inp.name] = array
    sizes = {len(a) for a in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise OnnxPruneError(f"{path}: input arrays have different or zero sample counts {sorted(sizes)}")
    if labels is not None and len(labels) != sizes.pop():
        raise OnnxPruneError(f"{path}: 'labels' has {len(labels)} entries, the inputs have {len(feeds[inputs[0].name])}")
    return Dataset(feeds, labels)


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically."""
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())
