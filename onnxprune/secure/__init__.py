"""Encryption of ONNX models at rest: AES-256-GCM containers, keys, and in-memory inference sessions.

Why: a pruned model is an asset; shipping it encrypted keeps weights and graph private until an
authorised process loads it, and `load_session` does that without writing the plaintext anywhere.
See `onnxprune.secure.container` for the file format.
"""

from onnxprune.secure.container import (
    DEFAULT_CHUNK_SIZE,
    FORMAT_VERSION,
    MAGIC,
    ContainerHeader,
    KdfParams,
    PartInfo,
    is_encrypted,
    read_container_header,
)
from onnxprune.secure.files import (
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    ensure_plain_model,
)
from onnxprune.secure.keys import (
    KEY_SIZE,
    SCRYPT_N,
    KeyOrigin,
    KeySource,
    generate_key,
    parse_key_text,
    read_key_file,
    write_key_file,
)
from onnxprune.secure.session import DecryptedSession, load_session

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "KEY_SIZE",
    "MAGIC",
    "SCRYPT_N",
    "ContainerHeader",
    "DecryptedSession",
    "KdfParams",
    "KeyOrigin",
    "KeySource",
    "PartInfo",
    "decrypt_bytes",
    "decrypt_file",
    "encrypt_bytes",
    "encrypt_file",
    "ensure_plain_model",
    "generate_key",
    "is_encrypted",
    "load_session",
    "parse_key_text",
    "read_container_header",
    "read_key_file",
    "write_key_file",
]
