"""Encrypt and decrypt model files (with their external data) on disk, streaming, writing atomically."""

from __future__ import annotations

import io
import os
from contextlib import ExitStack
from pathlib import Path

from onnxprune.atomic import atomic_writer
from onnxprune.errors import OnnxPruneError
from onnxprune.outputs import check_outputs
from onnxprune.secure.container import (
    DEFAULT_CHUNK_SIZE,
    PART_EXTERNAL,
    PART_MANIFEST,
    PART_MODEL,
    ContainerHeader,
    Manifest,
    is_encrypted,
    is_encrypted_stream,
    open_container,
)
from onnxprune.secure.external import check_location, external_locations, resolve_location
from onnxprune.secure.keys import KeySource
from onnxprune.secure.payload import (
    PayloadPart,
    decrypt_container_bytes,
    open_payload,
    read_manifest,
    write_container,
)


def ensure_plain_model(path: str | os.PathLike, remedy: str = "decrypt it first, or pass its key") -> None:
    """Refuse an encrypted model where a plain ONNX file is needed (every reader of plain models asks
    here); `remedy` says what to do instead, in the caller's terms."""
    if is_encrypted(path):
        raise OnnxPruneError(f"{os.fspath(path)}: is an encrypted model ({remedy})")


def encrypt_file(
    src_model_path: str | os.PathLike,
    dst_path: str | os.PathLike,
    key_source: KeySource,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> ContainerHeader:
    """Encrypt a model and its external-data files into one container, so weights and graph stay private.

    Streams with two chunk-sized buffers, whatever the model size. External data is read only from inside
    the model's folder. `dst_path` is written atomically (nothing is left on failure).
    """
    src = Path(src_model_path)
    where = str(src)
    ensure_plain_model(src)
    parts = _model_parts(src, where)
    check_outputs([part.path for part in parts], [dst_path])
    with atomic_writer(dst_path) as out:
        return write_container(out, parts, key_source, chunk_size, where)


def decrypt_file(
    src: str | os.PathLike, dst_model_path: str | os.PathLike, key_source: KeySource
) -> list[Path]:
    """Restore the plain model and its external-data files, for tools that need plain ONNX; return the paths.

    Everything is authenticated before any file is renamed into place, so a wrong key or a damaged file
    leaves nothing behind.
    """
    where = os.fspath(src)
    dst = Path(dst_model_path)
    with open_container(src) as (stream, size, header):
        pieces = open_payload(stream, size, header, key_source, where)
        manifest = read_manifest(pieces, header, where)
        targets = [dst] + _external_targets(dst, manifest, where)
        check_outputs([src], targets)
        with ExitStack() as stack:
            outputs = [stack.enter_context(atomic_writer(target)) for target in targets]
            for part, piece in pieces:
                outputs[part - 1].write(piece)
    return targets


def encrypt_bytes(
    model_bytes: bytes, key_source: KeySource, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """Encrypt a serialized model held in memory (no external data), for callers that keep it off disk."""
    where = "<model bytes>"
    if is_encrypted_stream(io.BytesIO(model_bytes)):
        raise OnnxPruneError(f"{where}: already encrypted")
    if external_locations(io.BytesIO(model_bytes), len(model_bytes), where):
        raise OnnxPruneError(f"{where}: model uses external data files (use encrypt_file on its path)")
    parts = [_manifest_part(Manifest(())), PayloadPart(PART_MODEL, len(model_bytes), data=model_bytes)]
    out = io.BytesIO()
    write_container(out, parts, key_source, chunk_size, where)
    return out.getvalue()


def decrypt_bytes(data: bytes, key_source: KeySource) -> bytes:
    """Decrypt a container held in memory, for callers that keep models off disk (no external data here)."""
    where = "<encrypted bytes>"
    manifest, plain_parts = decrypt_container_bytes(data, key_source, where)
    if manifest.external_names:
        raise OnnxPruneError(f"{where}: holds external data files (use decrypt_file or load_session)")
    return plain_parts[0]


def _model_parts(src: Path, where: str) -> list[PayloadPart]:
    """List what to encrypt: manifest, the model file, then each external-data file it references."""
    try:
        with open(src, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            locations = external_locations(handle, size, where)
    except OSError as exc:
        raise OnnxPruneError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    files = [resolve_location(src.parent, location, where) for location in locations]
    parts = [_manifest_part(Manifest(tuple(locations))), PayloadPart(PART_MODEL, size, path=src)]
    parts += [PayloadPart(PART_EXTERNAL, path.stat().st_size, path=path) for path in files]
    return parts


def _manifest_part(manifest: Manifest) -> PayloadPart:
    data = manifest.encode()
    return PayloadPart(PART_MANIFEST, len(data), data=data)


def _external_targets(dst: Path, manifest: Manifest, where: str) -> list[Path]:
    """Place each external file beside the decrypted model, refusing names that climb out of its folder."""
    folder = dst.parent.resolve()
    targets = []
    for name in manifest.external_names:
        target = dst.parent / check_location(name, where)
        if not target.resolve().is_relative_to(folder):
            raise OnnxPruneError(f"{where}: external data file {name!r} would land outside {dst.parent}")
        targets.append(target)
    return targets
