"""Data: the model's inputs as specs, the one dataset type, its one validator, random inputs, and files.

- `InputSpec`: what a model input takes (name, shape, dtype, whether the batch is dynamic), read off the
  IR (`model_specs`) or an onnxruntime session (`session_specs`); `NUMPY_TYPES` is the one table from
  onnxruntime's type names to numpy dtypes.
- `Dataset`: one array per model input with N samples on axis 0, plus the file's other arrays (`labels`,
  arrays for a user eval); `check_data` is the one check of arrays against specs, `load_data` reads a
  file through it. Analysis data, calibration data and `run --data` all come this way.
- `random_feeds`: deterministic random inputs for specs (a stand-in when no data is given: shape
  probing, verification, `run` without data); `random_data` is a whole random `Dataset`.
- `.npz` archives (`read_arrays`, `write_npz`, read without pickle) and the JSON files users hand in
  (specs, sensitivity tables, configs: `read_json`, `read_bounded`).
"""

from __future__ import annotations

import hashlib
import io as _io
import json
import os
import stat
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxprune.atomic import write_bytes
from onnxprune.errors import OnnxPruneError, OptionError, first_line

if TYPE_CHECKING:
    import onnxruntime as ort

    from onnxprune.graph.model import Model

LABELS = "labels"
DEFAULT_BATCH = 32
RANDOM_SAMPLES = 64

NUMPY_TYPES = {  # onnxruntime's type names -> numpy dtypes
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


# --- what the model takes ------------------------------------------------------------------------------


@dataclass
class InputSpec:
    """One model input: its shape (batch 1 where known; None for a dimension left dynamic), its dtype,
    and whether the batch (axis 0) is dynamic."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype
    dynamic_batch: bool


def _dynamic(declared: list | tuple | None) -> bool:
    return not declared or not isinstance(declared[0], int) or declared[0] <= 0


def model_specs(model: Model) -> list[InputSpec]:
    """The inputs of an IR model, at the shapes it was loaded with (`model.input_shapes`)."""
    specs = []
    for tensor in model.graph.inputs:
        try:
            dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        except TypeError:  # an ONNX type numpy has no dtype for (bfloat16, float8, ...)
            from onnx.helper import tensor_dtype_to_string  # only to name it: data knows numpy types alone

            kind = tensor_dtype_to_string(tensor.dtype) if isinstance(tensor.dtype, int) else tensor.dtype
            raise OnnxPruneError(f"input {tensor.name!r} is of type {kind}, which onnxprune cannot feed to "
                                 "onnxruntime; convert the model to float32 or float16") from None
        specs.append(InputSpec(tensor.name, tuple(model.input_shapes[tensor.name]), dtype, _dynamic(tensor.shape)))
    return specs


def session_specs(inputs: list[ort.NodeArg], input_shapes: Mapping[str, tuple[int, ...]] | None = None) \
        -> list[InputSpec]:
    """The inputs of an onnxruntime session, at `input_shapes` where given, else as declared."""
    specs = []
    for inp in inputs:
        declared = tuple(d if isinstance(d, int) and d > 0 else None for d in inp.shape)
        shape = tuple(input_shapes[inp.name]) if input_shapes and inp.name in input_shapes else declared
        specs.append(InputSpec(inp.name, shape, np.dtype(NUMPY_TYPES.get(inp.type, np.int64)), _dynamic(inp.shape)))
    return specs


# --- random inputs ---------------------------------------------------------------------------------------


def random_array(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A deterministic input: standard normal for floats, ones for bools, zeros for integers (indices and
    sizes: zero is always in range)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.random.default_rng(seed).standard_normal(shape).astype(dtype, copy=False)
    return np.ones(shape, dtype=bool) if dtype.kind == "b" else np.zeros(shape, dtype=dtype)


def random_feeds(specs: list[InputSpec], batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs at the specs' shapes (input k from seed + k); a dynamic batch becomes
    `batch` when given. Every dimension must be known (fix dynamic ones with the model's input shapes)."""
    feeds = {}
    for k, spec in enumerate(specs):
        shape = spec.shape
        if batch is not None and spec.dynamic_batch and shape:
            shape = (batch, *shape[1:])
        feeds[spec.name] = random_array(spec.dtype, shape, seed + k)
    return feeds


def random_data(specs: list[InputSpec], samples: int = RANDOM_SAMPLES, batch_size: int = DEFAULT_BATCH,
                seed: int = 0) -> Dataset:
    """Deterministic random samples: a stand-in `Dataset` when no data is given (fidelity only)."""
    fixed = max((s.shape[0] for s in specs if not s.dynamic_batch), default=1)
    samples = -(-samples // fixed) * fixed  # a whole number of the model's fixed batches
    inputs = {s.name: random_array(s.dtype, (samples, *s.shape[1:]), seed + k) for k, s in enumerate(specs)}
    return Dataset(inputs, {}, _batch_size(specs, batch_size, samples, "random inputs"), "random")


# --- the dataset and its check -------------------------------------------------------------------------


@dataclass
class Dataset:
    """One array per model input with N samples on axis 0, and whatever else the file had."""

    inputs: dict[str, np.ndarray]
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # `labels` and arrays for a user eval
    batch_size: int = DEFAULT_BATCH
    source: str = "random"

    @property
    def samples(self) -> int:
        return len(next(iter(self.inputs.values())))

    @property
    def labels(self) -> np.ndarray | None:
        return self.extra.get(LABELS)

    def batches(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(index, feeds) for each batch, in order."""
        for k, start in enumerate(range(0, self.samples, self.batch_size)):
            yield k, {name: a[start:start + self.batch_size] for name, a in self.inputs.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        return {**self.inputs, **self.extra}

    def digest(self) -> str:
        """Identifies the data (names, shapes, dtypes and bytes of every array) and the batching."""
        h = hashlib.sha256(f"batch={self.batch_size}".encode())
        for name, array in sorted(self.arrays().items()):
            h.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
            h.update(np.ascontiguousarray(array).data)
        return h.hexdigest()


def load_data(path: str | os.PathLike, specs: list[InputSpec], batch_size: int = DEFAULT_BATCH,
              user_eval: bool = False, cast: bool = False) -> Dataset:
    """Read a data file and check it against the model's inputs (`check_data`)."""
    return check_data(read_arrays(path), specs, str(path), batch_size, user_eval, cast)


def check_data(arrays: Mapping[str, np.ndarray], specs: list[InputSpec], where: str,
               batch_size: int = DEFAULT_BATCH, user_eval: bool = False, cast: bool = False) -> Dataset:
    """The one check of data against a model's inputs: names, dtypes (with `cast`, converted where numpy
    casts within the kind, float64 -> float32), shapes (every known dimension past the batch), sample
    counts, labels; other arrays only for a user eval (`user_eval`)."""
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    inputs = {spec.name: _checked(arrays.pop(spec.name, None), spec, specs, where, cast) for spec in specs}
    counts = {len(a) for a in inputs.values()}
    if len(counts) != 1 or 0 in counts:
        raise OnnxPruneError(f"{where}: the input arrays must hold the same, nonzero number of samples")
    n = counts.pop()
    if LABELS in arrays:
        labels = arrays[LABELS]
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim == 0 or len(labels) != n:
            raise OnnxPruneError(f"{where}: 'labels' must be integers with one entry per sample ({n})")
    if arrays and not user_eval and set(arrays) - {LABELS}:
        extra = ", ".join(sorted(set(arrays) - {LABELS}))
        names = ", ".join(s.name for s in specs)
        raise OnnxPruneError(f"{where}: arrays {extra} are neither model inputs ({names}) nor 'labels'")
    return Dataset(inputs, arrays, _batch_size(specs, batch_size, n, where), where)


def _checked(array: np.ndarray | None, spec: InputSpec, specs: list[InputSpec], where: str, cast: bool) -> np.ndarray:
    if array is None:
        names = ", ".join(s.name for s in specs)
        raise OnnxPruneError(f"{where}: no array named {spec.name!r}; the model's inputs are: {names}")
    if array.dtype != spec.dtype:
        if not cast or not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise OnnxPruneError(f"{where}: array {spec.name!r} is {array.dtype}, the model wants {spec.dtype}")
        array = array.astype(spec.dtype)
    if array.ndim != len(spec.shape) or any(d is not None and d != s for d, s in zip(spec.shape[1:], array.shape[1:])):
        want = ",".join(["N", *("?" if d is None else str(d) for d in spec.shape[1:])])
        raise OptionError(f"{where}: array {spec.name!r} has shape {list(array.shape)}, the model wants [{want}]"
                          " (use {input_shapes} for dynamic dimensions)")
    return array


def _batch_size(specs: list[InputSpec], wanted: int, n: int, where: str) -> int:
    fixed = {s.shape[0] for s in specs if not s.dynamic_batch}
    if not fixed:
        return max(1, min(wanted, n))
    size = fixed.pop()
    if fixed or n % size:
        raise OnnxPruneError(f"{where}: the model's batch size is fixed at {size}; the data must hold a multiple "
                             f"of it (has {n} samples)")
    return size


def count_samples(path: str | os.PathLike) -> int:
    """Samples in an .npz (the length of its first array), e.g. of a full validation set."""
    arrays = read_arrays(path)
    if not arrays:
        raise OnnxPruneError(f"{path}: the file holds no arrays")
    first = arrays[min(arrays)]
    return int(first.shape[0]) if first.ndim else 1


# --- files -------------------------------------------------------------------------------------------------


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


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically."""
    buffer = _io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())
