"""Save models atomically, as the graph they came from; over 2 GB with one external data file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from onnxprune.atomic import write_bytes
from onnxprune.graph.model import Model, with_weights

PROTOBUF_LIMIT = 2**31 - 2**20  # leave room for the non-weight part of the message


def save(proto: onnx.ModelProto, path: str | os.PathLike) -> None:
    """Write a model atomically; models over 2 GB get one external data file beside them."""
    path = Path(path)
    if proto.ByteSize() < PROTOBUF_LIMIT:
        write_bytes(path, proto.SerializeToString())
        return
    data_name = data_path(path).name
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        onnx.save_model(
            proto, os.path.join(tmp, path.name), save_as_external_data=True,
            all_tensors_to_one_file=True, location=data_name, size_threshold=1024,
        )
        os.replace(os.path.join(tmp, data_name), path.parent / data_name)
        os.replace(os.path.join(tmp, path.name), path)


def data_path(path: str | os.PathLike) -> Path:
    """Where `save` puts the weights of a model over 2 GB: `NAME.data` beside it (an output too)."""
    return Path(f"{path}.data")


def save_model(model: Model, path: str | os.PathLike) -> None:
    """Write a `Model` as the graph it came from, with its current weight values."""
    save(with_weights(model), path)
