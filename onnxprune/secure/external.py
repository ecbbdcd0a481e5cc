"""Find and check an ONNX model's external-data files without loading its weights.

`onnx.load` reads the whole model into memory (twice, as bytes then objects); for encryption we only need the
`location` of tensors stored outside the model, so we walk the protobuf wire format and seek past big fields.
The walk follows onnx's own message descriptors, so every place a tensor can sit (initializers, attributes,
subgraphs, functions, sparse tensors, training info) is covered.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import onnx
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from onnxprune.errors import OnnxPruneError

_TENSOR = onnx.TensorProto.DESCRIPTOR
_TENSOR_EXTERNAL_DATA = _TENSOR.fields_by_name["external_data"].number
_TENSOR_DATA_LOCATION = _TENSOR.fields_by_name["data_location"].number
_EXTERNAL = onnx.TensorProto.EXTERNAL
_MODEL_IR_VERSION = onnx.ModelProto.DESCRIPTOR.fields_by_name["ir_version"].number
_MODEL_GRAPH = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
_MAX_DEPTH = 100
_WINDOW = 1 << 16


class _WireReader:
    """Read protobuf wire data from a seekable file through a small window, so big fields are skipped."""

    def __init__(self, stream: BinaryIO, size: int, where: str) -> None:
        self.stream = stream
        self.size = size
        self.where = where
        self.pos = 0
        self._window = b""
        self._window_start = 0

    def fail(self, what: str) -> OnnxPruneError:
        return OnnxPruneError(f"{self.where}: not a valid ONNX model ({what} at byte {self.pos})")

    def byte(self) -> int:
        index = self.pos - self._window_start
        if not 0 <= index < len(self._window):
            self.stream.seek(self.pos)
            self._window = self.stream.read(_WINDOW)
            self._window_start = self.pos
            index = 0
            if not self._window:
                raise self.fail("unexpected end of data")
        self.pos += 1
        return self._window[index]

    def varint(self) -> int:
        value = 0
        for shift in range(0, 70, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
        raise self.fail("varint too long")

    def read(self, count: int) -> bytes:
        self.stream.seek(self.pos)
        data = self.stream.read(count)
        if len(data) != count:
            raise self.fail("unexpected end of data")
        self.pos += count
        return data

    def end_of(self, length: int, limit: int) -> int:
        end = self.pos + length
        if end > limit:
            raise self.fail("field runs past its message")
        return end


def external_locations(stream: BinaryIO, size: int, where: str) -> list[str]:
    """List the distinct external-data `location`s of a serialized ModelProto, in first-seen order."""
    reader = _WireReader(stream, size, where)
    found: dict[str, None] = {}
    seen_top = _walk(reader, size, onnx.ModelProto.DESCRIPTOR, found, depth=0)
    if _MODEL_IR_VERSION not in seen_top or _MODEL_GRAPH not in seen_top:
        raise OnnxPruneError(f"{where}: not an ONNX model (no ir_version or graph)")
    return list(found)


def _walk(reader: _WireReader, end: int, desc: Descriptor, found: dict[str, None], depth: int) -> set[int]:
    """Walk one message up to `end`; record external tensor locations; return the field numbers seen."""
    if depth > _MAX_DEPTH:
        raise reader.fail("messages nested too deeply")
    is_tensor = desc is _TENSOR
    external = False
    location: str | None = None
    seen: set[int] = set()
    while reader.pos < end:
        key = reader.varint()
        number, wire_type = key >> 3, key & 7
        seen.add(number)
        if wire_type == 0:
            value = reader.varint()
            if is_tensor and number == _TENSOR_DATA_LOCATION:
                external = value == _EXTERNAL
        elif wire_type == 1:
            reader.pos = reader.end_of(8, end)
        elif wire_type == 5:
            reader.pos = reader.end_of(4, end)
        elif wire_type == 2:
            sub_end = reader.end_of(reader.varint(), end)
            field = desc.fields_by_number.get(number)
            if is_tensor and number == _TENSOR_EXTERNAL_DATA:
                entry_key, entry_value = _read_entry(reader, sub_end)
                if entry_key == "location":
                    location = entry_value
            elif field is not None and field.type == FieldDescriptor.TYPE_MESSAGE:
                _walk(reader, sub_end, field.message_type, found, depth + 1)
            reader.pos = sub_end
        else:
            raise reader.fail(f"unsupported wire type {wire_type}")
    if reader.pos != end:
        raise reader.fail("field runs past its message")
    if external:
        if not location:
            raise reader.fail("external tensor without a location")
        found.setdefault(location, None)
    return seen


def _read_entry(reader: _WireReader, end: int) -> tuple[str, str]:
    """Read a StringStringEntryProto (key = field 1, value = field 2)."""
    values = {1: "", 2: ""}
    while reader.pos < end:
        key = reader.varint()
        number, wire_type = key >> 3, key & 7
        if wire_type != 2:
            raise reader.fail("bad external_data entry")
        sub_end = reader.end_of(reader.varint(), end)
        raw = reader.read(sub_end - reader.pos)
        if number in values:
            try:
                values[number] = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise reader.fail("external_data entry is not UTF-8") from None
    return values[1], values[2]


def check_location(location: str, where: str) -> PurePosixPath:
    """Refuse a location that is absolute or climbs with `..`, so external data stays in the model folder."""
    if not location or "\x00" in location or "\\" in location:
        raise OnnxPruneError(f"{where}: external data location {location!r} is not a plain relative path")
    path = PurePosixPath(location)
    if path.is_absolute() or os.path.isabs(location) or ".." in path.parts:
        raise OnnxPruneError(f"{where}: external data location {location!r} points outside the model folder")
    if not path.parts or path.parts == (".",):
        raise OnnxPruneError(f"{where}: external data location {location!r} names no file")
    return path


def resolve_location(model_dir: Path, location: str, where: str) -> Path:
    """Find the real file behind a location, refusing symlinks that lead out of the model's folder.

    Every reader of external data (loading, encryption) goes through this one check.
    """
    relative = check_location(location, where)
    root = model_dir.resolve()
    try:
        real = (root / relative).resolve(strict=True)
    except FileNotFoundError:
        raise OnnxPruneError(f"{where}: external data file {location!r} not found beside the model") from None
    except (OSError, RuntimeError) as exc:
        raise OnnxPruneError(f"{where}: external data file {location!r} cannot be resolved ({exc})") from None
    if not real.is_relative_to(root):
        raise OnnxPruneError(f"{where}: external data location {location!r} leads outside the model folder")
    if not real.is_file():
        raise OnnxPruneError(f"{where}: external data location {location!r} is not a regular file")
    if real.stat().st_nlink > 1:  # its other names may lie anywhere: the folder would not bound it
        raise OnnxPruneError(f"{where}: external data file {location!r} has other hard links; copy it instead")
    return real
