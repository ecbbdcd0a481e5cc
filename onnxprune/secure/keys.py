"""Keys for encrypted models: where a 256-bit key comes from (bytes, key file, environment, passphrase).

Key file format (decided here, documented in `read_key_file`): exactly 32 raw bytes, or text holding the
key as 64 hex digits or as base64 of 32 bytes (surrounding whitespace allowed). `write_key_file` writes hex.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from onnxprune.atomic import atomic_writer
from onnxprune.errors import OnnxPruneError, OptionError

KEY_SIZE = 32
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
SCRYPT_SALT_SIZE = 16
# Smallest n accepted at all (tests only, through an explicit argument); defaults never go below SCRYPT_N.
SCRYPT_MIN_N = 2**10
# scrypt uses 128 * r * n * p bytes of memory: a damaged header may not ask for more than 1 GiB.
SCRYPT_MAX_MEMORY = 1 << 30
_MAX_KEY_FILE_SIZE = 1024
_KEY_FORMATS = "32 raw bytes, 64 hex digits or base64 of 32 bytes"


def generate_key() -> bytes:
    """Make a new random key, so users never invent weak ones: 32 bytes from the OS CSPRNG."""
    return secrets.token_bytes(KEY_SIZE)


def parse_key_text(text: str, where: str) -> bytes:
    """Turn a key written as text (hex or base64) into 32 bytes, so keys can live in env vars and files."""
    cleaned = "".join(text.split())
    if len(cleaned) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(cleaned)
        except ValueError:
            pass
    if len(cleaned) in (43, 44):
        standard = cleaned.replace("-", "+").replace("_", "/")  # accept the URL-safe alphabet too
        try:
            key = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) == KEY_SIZE:
            return key
    raise OnnxPruneError(f"{where}: not a key: expected {_KEY_FORMATS} ({len(cleaned)} characters found)")


def read_key_file(path: str | os.PathLike) -> bytes:
    """Read a key file so the key never has to appear on a command line.

    Accepted: exactly 32 raw bytes, or text with 64 hex digits or base64 of 32 bytes (whitespace around is
    ignored). A 32-byte file that is all printable text is refused: it is a too-short text key, not raw bytes.
    """
    where = f"key file {os.fspath(path)}"
    try:
        with open(path, "rb") as handle:
            _warn_if_shared(os.fstat(handle.fileno()).st_mode, where)
            data = handle.read(_MAX_KEY_FILE_SIZE + 1)
    except FileNotFoundError:
        raise OnnxPruneError(f"{where}: not found") from None
    except OSError as exc:
        raise OnnxPruneError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > _MAX_KEY_FILE_SIZE:
        raise OnnxPruneError(f"{where}: too large for a key file (expected {_KEY_FORMATS})")
    if len(data) == KEY_SIZE and not _is_printable_ascii(data):
        return data
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise OnnxPruneError(
            f"{where}: not a key: expected {_KEY_FORMATS} ({len(data)} bytes found)"
        ) from None
    return parse_key_text(text, where)


def _warn_if_shared(mode: int, where: str) -> None:
    """Warn about a key others can read (ssh refuses such keys; we still use it, the user may be mid-fix)."""
    if mode & 0o077:
        warnings.warn(f"{where}: readable by others (mode {stat.S_IMODE(mode):04o}); run chmod 600 on it",
                      stacklevel=3)


def write_key_file(path: str | os.PathLike, key: bytes | None = None, *, overwrite: bool = False) -> bytes:
    """Create a key file only its owner can read (mode 0600, atomic), so the key is not exposed; return it.

    The file holds the key as 64 hex digits and a newline. A new key is generated unless `key` is given.
    An existing file is kept unless `overwrite` is true, because losing a key loses every model it encrypted.
    """
    target = Path(path)
    if key is None:
        key = generate_key()
    _check_key_bytes(key, "key")
    if target.exists() and not overwrite:
        raise OnnxPruneError(f"key file {target}: already exists (refusing to replace a key)")
    with atomic_writer(target, mode=0o600) as handle:
        handle.write(key.hex().encode("ascii") + b"\n")
    return key


@dataclass(frozen=True)
class KeySource:
    """Where the key comes from: exactly one of raw key bytes, a key file, or a passphrase.

    `scrypt_n` is used only when encrypting with a passphrase; decryption reads n from the file's header.
    Lower it only in tests; the default is 2**17. Key and passphrase are left out of repr so logs stay clean.
    """

    key: bytes | None = field(default=None, repr=False)
    key_file: str | os.PathLike | None = None
    passphrase: str | None = field(default=None, repr=False)
    scrypt_n: int = SCRYPT_N

    def __post_init__(self) -> None:
        given = [name for name in ("key", "key_file", "passphrase") if getattr(self, name) is not None]
        if len(given) != 1:
            raise OnnxPruneError(
                f"give exactly one of key, key file or passphrase (got {', '.join(given) or 'none'})"
            )
        if self.key is not None:
            _check_key_bytes(self.key, "key")
        if self.passphrase is not None and not self.passphrase:
            raise OnnxPruneError("passphrase: empty")
        check_scrypt_params(self.scrypt_n, SCRYPT_R, SCRYPT_P, "scrypt_n")

    @classmethod
    def from_env(cls, name: str) -> KeySource:
        """Take the key from environment variable `name` (hex or base64 text), for CI and containers."""
        value = os.environ.get(name)
        if not value:
            raise OnnxPruneError(f"environment variable {name}: not set or empty (expected a key)")
        return cls(key=parse_key_text(value, f"environment variable {name}"))

    @classmethod
    def from_args(
        cls,
        key_file: str | os.PathLike | None = None,
        key: bytes | None = None,
        passphrase: str | None = None,
    ) -> KeySource | None:
        """Build a source from optional CLI-style arguments: None when none is given, an error if several."""
        if key_file is None and key is None and passphrase is None:
            return None
        return cls(key=key, key_file=key_file, passphrase=passphrase)

    @property
    def kind(self) -> str:
        """Name the kind of secret, for messages that must not show the secret itself."""
        return "passphrase" if self.passphrase is not None else "key"

    def raw_key(self) -> bytes:
        """Return the 32-byte key of a key/key-file source (a passphrase needs `derive_passphrase_key`)."""
        if self.key is not None:
            return self.key
        if self.key_file is not None:
            return read_key_file(self.key_file)
        raise OnnxPruneError("a passphrase has no raw key: it is stretched with scrypt and the file's salt")


@dataclass(frozen=True)
class KeyOrigin:
    """Where the key is, as a user names it: a key file, an environment variable holding the key (hex or
    base64), or one holding a passphrase. The command line (--key-file, --key-env, --passphrase-env) and
    the run config's [encrypt] table (key_file, key_env, passphrase_env) are both this; `source()` reads
    the key. Option errors name the fields (`OptionError`): each front end says them its own way."""

    key_file: str | os.PathLike | None = None
    key_env: str | None = None
    passphrase_env: str | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.key_file, self.key_env, self.passphrase_env))

    def check(self, required: bool = False) -> None:
        """At most one way (exactly one when `required`)."""
        count = sum(v is not None for v in (self.key_file, self.key_env, self.passphrase_env))
        if count > 1 or (required and not count):
            raise OptionError(f"give {'only' if count else 'exactly'} one of {{key_file}}, {{key_env}} and "
                              "{passphrase_env}")

    def source(self) -> KeySource | None:
        """The key this names (None when it names none); an unset variable is refused in one line."""
        self.check()
        if self.key_env is not None:
            return KeySource.from_env(self.key_env)
        if self.passphrase_env is not None:
            passphrase = os.environ.get(self.passphrase_env)
            if not passphrase:
                raise OnnxPruneError(f"environment variable {self.passphrase_env}: not set or empty "
                                     "(expected a passphrase)")
            return KeySource(passphrase=passphrase)
        return KeySource(key_file=self.key_file) if self.key_file is not None else None


def new_scrypt_salt() -> bytes:
    """Make a fresh salt so equal passphrases never give equal keys."""
    return secrets.token_bytes(SCRYPT_SALT_SIZE)


def derive_passphrase_key(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """Stretch a passphrase into a 32-byte key with scrypt, so guessing passphrases is slow."""
    check_scrypt_params(n, r, p, "scrypt parameters")
    normalized = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    try:
        return Scrypt(salt=salt, length=KEY_SIZE, n=n, r=r, p=p).derive(normalized)
    except (MemoryError, ValueError) as exc:  # OpenSSL's own limits, or no memory left for these parameters
        raise OnnxPruneError(f"scrypt n={n} r={r} p={p}: cannot derive the key here ({exc})") from None


def check_scrypt_params(n: int, r: int, p: int, where: str) -> None:
    """Refuse scrypt parameters that are weak beyond tests or that would exhaust memory."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (n, r, p)):
        raise OnnxPruneError(f"{where}: scrypt n, r, p must be integers")
    if n < SCRYPT_MIN_N or n & (n - 1):
        raise OnnxPruneError(f"{where}: scrypt n must be a power of two >= {SCRYPT_MIN_N} (got {n})")
    if not (1 <= r <= 32 and 1 <= p <= 16) or 128 * r * n * p > SCRYPT_MAX_MEMORY:
        raise OnnxPruneError(f"{where}: scrypt n={n} r={r} p={p} out of range (max 1 GiB of memory)")


def _check_key_bytes(key: bytes, where: str) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        size = len(key) if isinstance(key, (bytes, bytearray)) else type(key).__name__
        raise OnnxPruneError(f"{where}: must be exactly {KEY_SIZE} raw bytes (got {size})")


def _is_printable_ascii(data: bytes) -> bool:
    return all(32 <= b < 127 for b in data)
