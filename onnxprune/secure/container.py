"""The encrypted container: a versioned, authenticated header followed by a chunked AES-256-GCM stream.

Layout (all integers big-endian):

    magic (8 bytes "\\x89ONNXENC") | version (u16) | header length (u32) | header JSON | header tag (32 bytes)
    chunk 0 | chunk 1 | ... | chunk n-1            each chunk = ciphertext (chunk_size bytes, last one
                                                    shorter) + 16-byte GCM tag

The header JSON holds the cipher name, the key derivation (`raw` or scrypt with its salt, n, r, p), a fresh
random 96-bit nonce, a key-check value, the chunk size and the payload description: the sizes of its parts
(an encrypted manifest, the model, each external-data file) but no names. The payload is the parts
concatenated; the manifest (first part) holds the external files' relative names, so nothing in clear
reveals node or tensor names.

Keys: the master key (raw, or scrypt of the passphrase) goes through HKDF-SHA256 (salt = nonce) to give the
data key, the header MAC key and the key-check value, so a wrong key is told apart from a damaged file.
Chunk i is sealed with nonce = random nonce XOR i and associated data = magic..header JSON + i (u64) + final
flag (u8): a flipped, dropped, reordered, duplicated or truncated chunk fails authentication or the size
check, and the header is authenticated by its own HMAC tag and as associated data of every chunk.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from hashlib import sha256
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from onnxprune.errors import OnnxPruneError
from onnxprune.secure.keys import (
    SCRYPT_P,
    SCRYPT_R,
    KeySource,
    check_scrypt_params,
    derive_passphrase_key,
    new_scrypt_salt,
)

MAGIC = b"\x89ONNXENC"
FORMAT_VERSION = 1
CIPHER = "AES-256-GCM"
SUBKEYS = "HKDF-SHA256"
NONCE_SIZE = 12
TAG_SIZE = 16
HEADER_TAG_SIZE = 32
KEY_CHECK_SIZE = 16
DEFAULT_CHUNK_SIZE = 4 << 20
MIN_CHUNK_SIZE = 16
MAX_CHUNK_SIZE = 64 << 20
MAX_HEADER_SIZE = 1 << 20
MAX_MANIFEST_SIZE = 16 << 20
MAX_PARTS = 100_000
PART_MANIFEST, PART_MODEL, PART_EXTERNAL = "manifest", "model", "external"

_PREFIX = struct.Struct(">8sHI")
_CHUNK_AAD = struct.Struct(">QB")
_HKDF_INFO = b"onnxprune encrypted model v1"


@dataclass(frozen=True)
class KdfParams:
    """How the master key was obtained: `raw` (a key given as is) or `scrypt` over a passphrase."""

    name: str
    salt: bytes = b""
    n: int = 0
    r: int = 0
    p: int = 0


@dataclass(frozen=True)
class PartInfo:
    """One part of the payload, described without its name: `manifest`, `model` or `external`."""

    kind: str
    size: int


@dataclass(frozen=True)
class ContainerHeader:
    """The clear, authenticated header of an encrypted model: everything needed to decrypt it but the key."""

    version: int
    cipher: str
    kdf: KdfParams
    nonce: bytes
    key_check: bytes
    chunk_size: int
    parts: tuple[PartInfo, ...]
    encoded: bytes = field(repr=False, compare=False, default=b"")
    tag: bytes = field(repr=False, compare=False, default=b"")

    @property
    def payload_size(self) -> int:
        return sum(part.size for part in self.parts)

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.payload_size // self.chunk_size))

    @property
    def data_offset(self) -> int:
        """Byte offset of chunk 0 in the file."""
        return len(self.encoded) + HEADER_TAG_SIZE

    @property
    def file_size(self) -> int:
        """The exact size of a complete, untouched container with this header."""
        return self.data_offset + self.payload_size + TAG_SIZE * self.chunk_count

    def chunk_plain_size(self, index: int) -> int:
        return min(self.chunk_size, self.payload_size - index * self.chunk_size)


@dataclass(frozen=True)
class Manifest:
    """The encrypted part of the description: the external-data files' relative names, in part order."""

    external_names: tuple[str, ...]

    def encode(self) -> bytes:
        return json.dumps({"external": list(self.external_names)}, separators=(",", ":")).encode("utf-8")


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


def is_encrypted_stream(stream: BinaryIO) -> bool:
    """Tell an encrypted container from anything else by its magic bytes (an ONNX file starts with 0x08)."""
    return stream.read(len(MAGIC)) == MAGIC


def is_encrypted(path: str | os.PathLike) -> bool:
    """Tell whether `path` is an onnxprune encrypted model, so callers can refuse it where ONNX is needed."""
    try:
        with open(path, "rb") as handle:
            return is_encrypted_stream(handle)
    except FileNotFoundError:
        raise OnnxPruneError(f"{os.fspath(path)}: not found") from None
    except OSError as exc:
        raise OnnxPruneError(f"{os.fspath(path)}: cannot read it ({exc.strerror or exc})") from None


def read_container_header(path: str | os.PathLike) -> ContainerHeader:
    """Read and check the clear header of an encrypted model (no key needed), e.g. to inspect it."""
    with open_container(path) as (_, _, header):
        return header


@contextlib.contextmanager
def open_container(path: str | os.PathLike) -> Iterator[tuple[BinaryIO, int, ContainerHeader]]:
    """Open a container file and parse its header; OS errors become one-line refusals."""
    where = os.fspath(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed by the with block below
    except FileNotFoundError:
        raise OnnxPruneError(f"{where}: not found") from None
    except OSError as exc:
        raise OnnxPruneError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size, read_header(handle, where)


def read_header(stream: BinaryIO, where: str) -> ContainerHeader:
    """Parse magic, version and header JSON; refuse anything that is not a well-formed version-1 header."""
    prefix = stream.read(_PREFIX.size)
    if len(prefix) < len(MAGIC) or prefix[: len(MAGIC)] != MAGIC:
        raise OnnxPruneError(
            f"{where}: not an onnxprune encrypted model (no magic bytes; a plain ONNX model?)"
        )
    if len(prefix) < _PREFIX.size:
        raise OnnxPruneError(f"{where}: truncated (the header is incomplete)")
    _, version, header_size = _PREFIX.unpack(prefix)
    if version != FORMAT_VERSION:
        raise OnnxPruneError(
            f"{where}: unsupported encrypted-model format version {version} "
            f"(this onnxprune reads {FORMAT_VERSION})"
        )
    if header_size > MAX_HEADER_SIZE:
        raise OnnxPruneError(f"{where}: damaged header (header length {header_size} is implausible)")
    text = stream.read(header_size)
    tag = stream.read(HEADER_TAG_SIZE)
    if len(text) != header_size or len(tag) != HEADER_TAG_SIZE:
        raise OnnxPruneError(f"{where}: truncated (the header is incomplete)")
    header = _decode_header(text, version, where)
    return replace(header, encoded=prefix + text, tag=tag)


def write_container(
    out: BinaryIO, parts: list[PayloadPart], key_source: KeySource, chunk_size: int, where: str
) -> ContainerHeader:
    """Encrypt `parts` into `out` chunk by chunk, with two chunk-sized buffers whatever the payload size."""
    _check_chunk_size(chunk_size, "chunk_size")
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
    _check_parts(header.parts, where)
    body = _encode_header_json(header)
    encoded = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body
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
    try:
        value = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OnnxPruneError(f"{where}: damaged manifest (not JSON)") from None
    names = value.get("external") if isinstance(value, dict) else None
    external_count = sum(1 for part in header.parts if part.kind == PART_EXTERNAL)
    if (
        not isinstance(names, list)
        or len(names) != external_count
        or not all(isinstance(n, str) for n in names)
    ):
        raise OnnxPruneError(f"{where}: damaged manifest (external file names do not match the header)")
    return Manifest(tuple(names))


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


def _encode_header_json(header: ContainerHeader) -> bytes:
    kdf: dict[str, object] = {"name": header.kdf.name}
    if header.kdf.name == "scrypt":
        kdf.update(salt=header.kdf.salt.hex(), n=header.kdf.n, r=header.kdf.r, p=header.kdf.p)
    document = {
        "cipher": header.cipher,
        "subkeys": SUBKEYS,
        "kdf": kdf,
        "nonce": header.nonce.hex(),
        "key_check": header.key_check.hex(),
        "chunk_size": header.chunk_size,
        "parts": [{"kind": part.kind, "size": part.size} for part in header.parts],
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _decode_header(text: bytes, version: int, where: str) -> ContainerHeader:
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OnnxPruneError(f"{where}: damaged header (not valid JSON)") from None
    expected = {"cipher", "subkeys", "kdf", "nonce", "key_check", "chunk_size", "parts"}
    if not isinstance(doc, dict) or set(doc) != expected:
        raise OnnxPruneError(f"{where}: damaged header (unexpected fields)")
    if doc["cipher"] != CIPHER or doc["subkeys"] != SUBKEYS:
        raise OnnxPruneError(
            f"{where}: unsupported cipher {doc['cipher']!r}/{doc['subkeys']!r} (expected {CIPHER})"
        )
    chunk_size = _int_field(doc["chunk_size"], "chunk_size", where)
    _check_chunk_size(chunk_size, f"{where}: damaged header: chunk_size")
    parts = _decode_parts(doc["parts"], where)
    header = ContainerHeader(
        version=version,
        cipher=doc["cipher"],
        kdf=_decode_kdf(doc["kdf"], where),
        nonce=_hex_field(doc["nonce"], NONCE_SIZE, "nonce", where),
        key_check=_hex_field(doc["key_check"], KEY_CHECK_SIZE, "key_check", where),
        chunk_size=chunk_size,
        parts=parts,
    )
    _check_parts(parts, where)
    return header


def _decode_kdf(value: object, where: str) -> KdfParams:
    if not isinstance(value, dict):
        raise OnnxPruneError(f"{where}: damaged header (kdf)")
    if value == {"name": "raw"}:
        return KdfParams("raw")
    if value.get("name") != "scrypt" or set(value) != {"name", "salt", "n", "r", "p"}:
        raise OnnxPruneError(
            f"{where}: unsupported key derivation {value.get('name')!r} (expected raw or scrypt)"
        )
    n, r, p = (_int_field(value[k], f"kdf.{k}", where) for k in ("n", "r", "p"))
    check_scrypt_params(n, r, p, f"{where}: header")
    salt = bytes.fromhex(value["salt"]) if _is_hex(value["salt"]) else b""
    if len(salt) < 16:
        raise OnnxPruneError(f"{where}: damaged header (scrypt salt)")
    return KdfParams("scrypt", salt, n, r, p)


def _decode_parts(value: object, where: str) -> tuple[PartInfo, ...]:
    if not isinstance(value, list) or not value or len(value) > MAX_PARTS:
        raise OnnxPruneError(f"{where}: damaged header (parts)")
    parts = []
    for item in value:
        if not isinstance(item, dict) or set(item) != {"kind", "size"}:
            raise OnnxPruneError(f"{where}: damaged header (parts)")
        parts.append(PartInfo(str(item["kind"]), _int_field(item["size"], "parts.size", where)))
    return tuple(parts)


def _check_parts(parts: tuple[PartInfo, ...], where: str) -> None:
    kinds = [part.kind for part in parts]
    if kinds[:2] != [PART_MANIFEST, PART_MODEL] or any(kind != PART_EXTERNAL for kind in kinds[2:]):
        raise OnnxPruneError(f"{where}: damaged header (parts must be manifest, model, external...)")
    if not 0 < parts[0].size <= MAX_MANIFEST_SIZE:
        raise OnnxPruneError(f"{where}: damaged header (manifest size)")


def _check_chunk_size(chunk_size: int, where: str) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise OnnxPruneError(
            f"{where}: chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes"
        )


def _int_field(value: object, name: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OnnxPruneError(f"{where}: damaged header ({name} is not a non-negative integer)")
    return value


def _hex_field(value: object, size: int, name: str, where: str) -> bytes:
    if not _is_hex(value) or len(value) != 2 * size:  # type: ignore[arg-type]
        raise OnnxPruneError(f"{where}: damaged header ({name})")
    return bytes.fromhex(value)  # type: ignore[arg-type]


def _is_hex(value: object) -> bool:
    return isinstance(value, str) and len(value) % 2 == 0 and all(c in "0123456789abcdef" for c in value)
