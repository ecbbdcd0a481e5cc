"""Build an onnxruntime session from an encrypted model without the plaintext ever touching the disk."""

from __future__ import annotations

import io
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from onnxprune.errors import OnnxPruneError, first_line
from onnxprune.secure.container import open_container
from onnxprune.secure.external import check_location, external_locations
from onnxprune.secure.files import ensure_plain_model
from onnxprune.secure.keys import KeySource
from onnxprune.secure.payload import open_payload, read_manifest

# SessionOptions that received in-memory external data: onnxruntime keeps raw pointers to our buffers,
# which are freed once the session exists, so such an options object must never build another session.
_used_options: weakref.WeakSet[ort.SessionOptions] = weakref.WeakSet()
# onnxruntime's errors for a model it cannot load (they derive from Exception only).
_LOAD_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError) + tuple(
    getattr(ort_state, name)
    for name in (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "InvalidProtobuf",
        "InvalidGraph",
        "NotImplemented",
    )
    if hasattr(ort_state, name)
)


class DecryptedSession(ort.InferenceSession):
    """An InferenceSession whose external data came from decrypted buffers that are freed after creation.

    onnxruntime re-creates a session from its original inputs when providers change (set_providers, or
    the automatic fallback after an execution-provider failure); those buffers are gone, so both are
    refused here instead of reading freed memory. Call load_session again to change providers.
    """

    def set_providers(self, providers: object = None, provider_options: object = None) -> None:
        raise OnnxPruneError(
            "a session loaded from an encrypted model cannot change providers "
            "(call load_session with providers=)"
        )


@dataclass
class _PlainModel:
    """The decrypted model bytes and its external-data files, held only in memory."""

    model: bytes
    external_names: list[str]
    external_buffers: list[np.ndarray]


def load_session(
    path: str | os.PathLike,
    key_file: str | os.PathLike | None = None,
    key: bytes | None = None,
    passphrase: str | None = None,
    providers: list[str] | None = None,
    sess_options: ort.SessionOptions | None = None,
) -> ort.InferenceSession:
    """Open a model for inference, decrypting it in memory when a key is given, so one call serves both.

    Give at most one of `key_file`, `key` (32 raw bytes) or `passphrase`. Without one, `path` must be a
    plain ONNX model. With one, `path` must be an encrypted model: it is decrypted in memory (external
    data through onnxruntime's in-memory external initializers) and nothing plain is written to disk.
    Peak memory is about twice the model size (our buffers plus onnxruntime's copy); ours are freed after.
    With external data, a `sess_options` given here is spent on that one session (onnxruntime keeps
    pointers to our buffers, freed afterwards): do not reuse it; load_session refuses to.
    """
    source = KeySource.from_args(key_file=key_file, key=key, passphrase=passphrase)
    where = os.fspath(path)
    if source is None:
        return _load_plain(where, providers, sess_options)
    options = _session_options(sess_options, where)
    plain = _decrypt_in_memory(path, source)
    if plain.external_names:
        sizes = [buffer.size for buffer in plain.external_buffers]
        options.add_external_initializers_from_files_in_memory(
            plain.external_names, plain.external_buffers, sizes
        )
        _used_options.add(options)
        session = _create(DecryptedSession, plain.model, options, providers, where)
        session.disable_fallback()
        return session
    return _create(ort.InferenceSession, plain.model, options, providers, where)


def _load_plain(
    where: str, providers: list[str] | None, sess_options: ort.SessionOptions | None
) -> ort.InferenceSession:
    """Load an unencrypted model from its path, refusing an encrypted one that came without a key."""
    ensure_plain_model(where, "give a key file, key or passphrase")
    if sess_options is not None and sess_options in _used_options:
        raise OnnxPruneError("sess_options was spent on a session from an encrypted model (pass a fresh one)")
    return _create(ort.InferenceSession, where, sess_options, providers, where)


def _create(
    cls: type[ort.InferenceSession],
    model: str | bytes,
    options: ort.SessionOptions | None,
    providers: list[str] | None,
    where: str,
) -> ort.InferenceSession:
    """Create the session; onnxruntime's own load errors become one-line refusals."""
    try:
        return cls(model, sess_options=options, providers=providers)
    except _LOAD_ERRORS as exc:
        raise OnnxPruneError(f"{where}: onnxruntime cannot load the model ({first_line(exc)})") from None


def _session_options(sess_options: ort.SessionOptions | None, where: str) -> ort.SessionOptions:
    """Use the caller's options unless they would write the model to disk or were already spent."""
    if sess_options is None:
        return ort.SessionOptions()
    if sess_options.optimized_model_filepath:
        raise OnnxPruneError(
            f"{where}: sess_options.optimized_model_filepath would write the decrypted model to disk "
            "(unset it)"
        )
    if sess_options in _used_options:
        raise OnnxPruneError("sess_options was spent on a session from an encrypted model (pass a fresh one)")
    return sess_options


def _decrypt_in_memory(path: str | os.PathLike, source: KeySource) -> _PlainModel:
    """Decrypt the container into the model bytes and one numpy buffer per external file."""
    where = os.fspath(path)
    with open_container(path) as (stream, size, header):
        pieces = open_payload(stream, size, header, source, where)
        manifest = read_manifest(pieces, header, where)
        for name in manifest.external_names:
            check_location(name, where)
        model = bytearray(header.parts[1].size)
        externals = [np.empty(part.size, dtype=np.uint8) for part in header.parts[2:]]
        _fill([memoryview(model)] + [memoryview(array) for array in externals], pieces)
    model_bytes = bytes(model)  # onnxruntime takes bytes only; the model part is small when data is external
    del model
    _check_references(model_bytes, manifest.external_names, where)
    return _PlainModel(model_bytes, list(manifest.external_names), externals)


def _fill(targets: list[memoryview], pieces: Iterator[tuple[int, memoryview]]) -> None:
    """Copy each decrypted piece of part i (i >= 1) to the end of what targets[i - 1] holds so far."""
    filled = [0] * len(targets)
    for part, piece in pieces:
        index = part - 1
        targets[index][filled[index] : filled[index] + len(piece)] = piece
        filled[index] += len(piece)


def _check_references(model: bytes, names: tuple[str, ...], where: str) -> None:
    """Refuse a model that refers to external files not in the container, so nothing is read from disk."""
    missing = [name for name in external_locations(io.BytesIO(model), len(model), where) if name not in names]
    if missing:
        raise OnnxPruneError(
            f"{where}: the model refers to {len(missing)} external data file(s) not in the container"
        )
