"""Streaming AES-256-GCM encryption and decryption of a container's payload, chunk by chunk.

Why a module of its own: the layout (`onnxprune.secure.container`, which documents the whole format) can be
read and checked without a key; this is the part that needs one. It derives the per-file keys, seals the
parts into chunks with two chunk-sized buffers whatever the payload size, and yields plain bytes only
after their whole chunk has been authenticated.
"""

from __future__ import annotations

import hmac
import io
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace
from hashlib import sha256
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onnxprune.errors import OnnxPruneError
from onnxprune.secure.container import (
    CIPHER,
    FORMAT_VERSION,
    KEY_CHECK_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    ContainerHeader,
    KdfParams,
    Manifest,
    PartInfo,
    check_chunk_size,
    check_parts,
    encode_header,
    read_header,
)
from onnxprune.secure.keys import (
    SCRYPT_P,
    SCRYPT_R,
    KeySource,
    derive_passphrase_key,
    new_scrypt_salt,
)

_CHUNK_AAD = struct.Struct(">QB")
_HKDF_INFO = b"onnxprune encrypted model v1"


@dataclass(frozen=True)
class PayloadPart:
    """A part to encrypt: bytes in memory or a file on disk, with the size announced in the header."""

    kind: str
    size: int
    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True)
class _Keys:
    data: bytes
    header_mac: bytes
    check: bytes


def write_container(
    out: BinaryIO, parts: list[PayloadPart], key_source: KeySource, chunk_size: int, where: str
) -> ContainerHeader:
    """Encrypt `parts` into `out` chunk by chunk, with two chunk-sized buffers whatever the payload size."""
    check_chunk_size(chunk_size, "chunk_size")
    kdf, master = _new_master_key(key_source)
    nonce = secrets.token_bytes(NONCE_SIZE)
    keys = _derive_keys(master, nonce)
    header = ContainerHeader(
        version=FORMAT_VERSION,
        cipher=CIPHER,
        kdf=kdf,
        nonce=nonce,
        key_check=keys.check,
        chunk_size=chunk_size,
        parts=tuple(PartInfo(part.kind, part.size) for part in parts),
    )
    check_parts(header.parts, where)
    encoded = encode_header(header)
    header = replace(header, encoded=encoded, tag=_header_tag(keys, encoded))
    out.write(header.encoded)
    out.write(header.tag)
    aead = AESGCM(keys.data)
    sealed = bytearray(chunk_size + TAG_SIZE)
    count = 0
    for index, plain in enumerate(_plain_chunks(parts, chunk_size, where)):
        final = index == header.chunk_count - 1
        aad = _chunk_aad(header, index, final)
        out.write(_seal(aead, _chunk_nonce(nonce, index), plain, aad, memoryview(sealed)))
        count += 1
    if count != header.chunk_count:
        raise AssertionError(f"wrote {count} chunks, header announces {header.chunk_count}")
    return header


def open_payload(
    stream: BinaryIO, stream_size: int, header: ContainerHeader, key_source: KeySource, where: str
) -> Iterator[tuple[int, memoryview]]:
    """Check key, header and size now, then return the authenticated payload as (part index, bytes) pieces.

    Each piece is a view of a reused buffer: copy it before asking for the next one. A piece is only
    yielded after its whole chunk has been authenticated.
    """
    keys = _derive_keys(_master_key(key_source, header.kdf, where), header.nonce)
    if not hmac.compare_digest(keys.check, header.key_check):
        raise OnnxPruneError(f"{where}: wrong {key_source.kind} (key check failed; or the header is damaged)")
    if not hmac.compare_digest(_header_tag(keys, header.encoded), header.tag):
        raise OnnxPruneError(f"{where}: damaged or tampered header (header authentication failed)")
    if stream_size < header.file_size:
        raise OnnxPruneError(
            f"{where}: truncated ({stream_size} bytes, the header announces {header.file_size}; "
            "missing chunks?)"
        )
    if stream_size > header.file_size:
        raise OnnxPruneError(
            f"{where}: {stream_size - header.file_size} unexpected bytes after the last chunk "
            "(duplicated chunk or appended data)"
        )
    return _split_parts(_open_chunks(stream, header, keys, where), [part.size for part in header.parts])


def read_manifest(pieces: Iterator[tuple[int, memoryview]], header: ContainerHeader, where: str) -> Manifest:
    """Consume the manifest part (always first) from `pieces` and check it matches the header."""
    size = header.parts[0].size
    data = bytearray()
    for part, piece in pieces:
        if part != 0:
            raise AssertionError("the manifest part ended early")
        data += piece
        if len(data) == size:
            break
    if len(data) != size:
        raise OnnxPruneError(f"{where}: damaged manifest (size mismatch)")
    return Manifest.decode(bytes(data), header, where)


def decrypt_container_bytes(data: bytes, key_source: KeySource, where: str) -> tuple[Manifest, list[bytes]]:
    """Decrypt a whole container held in memory into its manifest and the plain bytes of each other part."""
    stream = io.BytesIO(data)
    header = read_header(stream, where)
    pieces = open_payload(stream, len(data), header, key_source, where)
    manifest = read_manifest(pieces, header, where)
    buffers = [bytearray() for _ in header.parts[1:]]
    for part, piece in pieces:
        buffers[part - 1] += piece
    return manifest, [bytes(buffer) for buffer in buffers]


def _plain_chunks(parts: list[PayloadPart], chunk_size: int, where: str) -> Iterator[memoryview]:
    """Read the parts back to back into one reused chunk buffer and yield each full (or final) chunk."""
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    filled = 0
    for part in parts:
        with _open_part(part) as source:
            remaining = part.size
            while remaining:
                want = min(chunk_size - filled, remaining)
                got = source.readinto(view[filled : filled + want])
                if not got:
                    raise OnnxPruneError(f"{part.path or where}: file shrank while it was being encrypted")
                filled += got
                remaining -= got
                if filled == chunk_size:
                    yield view
                    filled = 0
            if source.read(1):
                raise OnnxPruneError(f"{part.path or where}: file grew while it was being encrypted")
    if filled:
        yield view[:filled]


def _open_part(part: PayloadPart) -> BinaryIO:
    if part.data is not None:
        return io.BytesIO(part.data)
    if part.path is None:
        raise AssertionError("a payload part needs a path or data")
    try:
        return open(part.path, "rb", buffering=0)
    except OSError as exc:
        raise OnnxPruneError(f"{part.path}: cannot read it ({exc.strerror or exc})") from None


def _open_chunks(stream: BinaryIO, header: ContainerHeader, keys: _Keys, where: str) -> Iterator[memoryview]:
    """Read, authenticate and decrypt each chunk in order into one reused buffer."""
    aead = AESGCM(keys.data)
    sealed = bytearray(header.chunk_size + TAG_SIZE)
    plain = bytearray(header.chunk_size)
    stream.seek(header.data_offset)
    count = header.chunk_count
    for index in range(count):
        size = header.chunk_plain_size(index)
        sealed_view = memoryview(sealed)[: size + TAG_SIZE]
        _read_exact(stream, sealed_view, where)
        aad = _chunk_aad(header, index, index == count - 1)
        try:
            opened = _unseal(aead, _chunk_nonce(header.nonce, index), sealed_view, aad, memoryview(plain))
        except InvalidTag:
            raise OnnxPruneError(
                f"{where}: chunk {index + 1} of {count} failed authentication "
                "(damaged, tampered, reordered or duplicated data)"
            ) from None
        yield opened


def _seal(aead: AESGCM, nonce: bytes, plain: memoryview, aad: bytes, out: memoryview) -> memoryview:
    """Encrypt one chunk into `out` without allocating (older cryptography: allocate instead)."""
    if not hasattr(aead, "encrypt_into"):
        return memoryview(aead.encrypt(nonce, plain, aad))
    view = out[: len(plain) + TAG_SIZE]
    aead.encrypt_into(nonce, plain, aad, view)
    return view


def _unseal(aead: AESGCM, nonce: bytes, sealed: memoryview, aad: bytes, out: memoryview) -> memoryview:
    """Authenticate and decrypt one chunk into `out` (older cryptography: allocate instead)."""
    if not hasattr(aead, "decrypt_into"):
        return memoryview(aead.decrypt(nonce, sealed, aad))
    view = out[: len(sealed) - TAG_SIZE]
    aead.decrypt_into(nonce, sealed, aad, view)
    return view


def _split_parts(chunks: Iterator[memoryview], sizes: list[int]) -> Iterator[tuple[int, memoryview]]:
    """Cut the chunk stream at part boundaries, so each piece belongs to exactly one part."""
    part, left = 0, sizes[0]
    for chunk in chunks:
        offset = 0
        while offset < len(chunk):
            while left == 0:
                part += 1
                left = sizes[part]
            take = min(left, len(chunk) - offset)
            yield part, chunk[offset : offset + take]
            offset += take
            left -= take


def _read_exact(stream: BinaryIO, view: memoryview, where: str) -> None:
    filled = 0
    while filled < len(view):
        got = stream.readinto(view[filled:])
        if not got:
            raise OnnxPruneError(f"{where}: truncated (file shorter than its header announces)")
        filled += got


def _chunk_nonce(nonce: bytes, index: int) -> bytes:
    return (int.from_bytes(nonce, "big") ^ index).to_bytes(NONCE_SIZE, "big")


def _chunk_aad(header: ContainerHeader, index: int, final: bool) -> bytes:
    return header.encoded + _CHUNK_AAD.pack(index, 1 if final else 0)


def _derive_keys(master: bytes, nonce: bytes) -> _Keys:
    """Split the master key into independent per-file keys (data, header MAC, key check)."""
    material = HKDF(
        algorithm=hashes.SHA256(), length=32 + 32 + KEY_CHECK_SIZE, salt=nonce, info=_HKDF_INFO
    ).derive(master)
    return _Keys(data=material[:32], header_mac=material[32:64], check=material[64:])


def _header_tag(keys: _Keys, encoded: bytes) -> bytes:
    return hmac.new(keys.header_mac, encoded, sha256).digest()


def _new_master_key(source: KeySource) -> tuple[KdfParams, bytes]:
    if source.passphrase is None:
        return KdfParams("raw"), source.raw_key()
    kdf = KdfParams("scrypt", new_scrypt_salt(), source.scrypt_n, SCRYPT_R, SCRYPT_P)
    return kdf, derive_passphrase_key(source.passphrase, kdf.salt, kdf.n, kdf.r, kdf.p)


def _master_key(source: KeySource, kdf: KdfParams, where: str) -> bytes:
    if kdf.name == "raw":
        if source.passphrase is not None:
            raise OnnxPruneError(
                f"{where}: was encrypted with a key, not a passphrase (give the key or key file)"
            )
        return source.raw_key()
    if source.passphrase is None:
        raise OnnxPruneError(f"{where}: was encrypted with a passphrase (give the passphrase, not a key)")
    return derive_passphrase_key(source.passphrase, kdf.salt, kdf.n, kdf.r, kdf.p)
