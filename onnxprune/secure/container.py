"""The encrypted container format: a versioned, authenticated header followed by a chunked AES-256-GCM stream.

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

This module holds the layout: its constants, the header and manifest records, and reading and checking a
header (no key needed). `onnxprune.secure.payload` seals and opens the chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from onnxprune.errors import OnnxPruneError
from onnxprune.secure.keys import check_scrypt_params

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

    @classmethod
    def decode(cls, data: bytes, header: ContainerHeader, where: str) -> Manifest:
        """Parse the decrypted manifest part and check it names one file per external part of `header`."""
        try:
            value = json.loads(data.decode("utf-8"))
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
        return cls(tuple(names))


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


def encode_header(header: ContainerHeader) -> bytes:
    """The clear bytes of `header` as written to the file: magic, version, length and header JSON."""
    body = _encode_header_json(header)
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body


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
    check_chunk_size(chunk_size, f"{where}: damaged header: chunk_size")
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
    check_parts(parts, where)
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


def check_parts(parts: tuple[PartInfo, ...], where: str) -> None:
    kinds = [part.kind for part in parts]
    if kinds[:2] != [PART_MANIFEST, PART_MODEL] or any(kind != PART_EXTERNAL for kind in kinds[2:]):
        raise OnnxPruneError(f"{where}: damaged header (parts must be manifest, model, external...)")
    if not 0 < parts[0].size <= MAX_MANIFEST_SIZE:
        raise OnnxPruneError(f"{where}: damaged header (manifest size)")


def check_chunk_size(chunk_size: int, where: str) -> None:
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
