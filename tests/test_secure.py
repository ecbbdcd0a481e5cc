"""Tests for onnxprune.secure: container round trips, keys, refusals, external data, no names in clear."""

from __future__ import annotations

import base64
import io
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxprune
from onnxprune.errors import OnnxPruneError
from onnxprune.secure import (
    SCRYPT_N,
    KeySource,
    decrypt_bytes,
    decrypt_file,
    encrypt_bytes,
    encrypt_file,
    ensure_plain_model,
    generate_key,
    is_encrypted,
    load_session,
    read_container_header,
    read_key_file,
    write_key_file,
)
from onnxprune.secure.container import Manifest
from onnxprune.secure.external import external_locations
from onnxprune.secure.payload import PayloadPart, write_container

TEST_SCRYPT_N = 2**12  # tests only: the default stays SCRYPT_N = 2**17
SECRET_NAMES = [
    "secret_input_pixels",
    "secret_conv_weight",
    "secret_conv_bias",
    "secret_conv_node",
    "secret_relu_node",
    "secret_flatten_node",
    "secret_gemm_weight",
    "secret_gemm_bias",
    "secret_gemm_node",
    "secret_logits",
]


# ---------------------------------------------------------------- fixtures and helpers


def make_model(seed: int = 0) -> onnx.ModelProto:
    """A small Conv -> Relu -> Flatten -> Gemm model with random weights and recognisable names."""
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv_b = rng.standard_normal(4).astype(np.float32)
    gemm_w = rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32)
    gemm_b = rng.standard_normal(10).astype(np.float32)
    nodes = [
        helper.make_node(
            "Conv",
            ["secret_input_pixels", "secret_conv_weight", "secret_conv_bias"],
            ["c"],
            name="secret_conv_node",
        ),
        helper.make_node("Relu", ["c"], ["r"], name="secret_relu_node"),
        helper.make_node("Flatten", ["r"], ["f"], name="secret_flatten_node"),
        helper.make_node(
            "Gemm",
            ["f", "secret_gemm_weight", "secret_gemm_bias"],
            ["secret_logits"],
            name="secret_gemm_node",
            transB=1,
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("secret_input_pixels", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("secret_logits", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(conv_w, "secret_conv_weight"),
            numpy_helper.from_array(conv_b, "secret_conv_bias"),
            numpy_helper.from_array(gemm_w, "secret_gemm_weight"),
            numpy_helper.from_array(gemm_b, "secret_gemm_bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def model_input() -> dict[str, np.ndarray]:
    return {"secret_input_pixels": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}


def run(session: ort.InferenceSession) -> np.ndarray:
    return session.run(None, model_input())[0]


def reference_output(model_path: Path) -> np.ndarray:
    return run(ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]))


def save_plain(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(make_model(), path)
    return path


def save_external(folder: Path, one_file: bool = True, location: str = "weights.bin") -> Path:
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(
        make_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=one_file,
        location=location if one_file else None,
        size_threshold=0,
    )
    return path


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def chunks_of(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a container into its header bytes and its sealed chunks."""
    header = _header_of(data)
    sizes = [header.chunk_plain_size(i) + 16 for i in range(header.chunk_count)]
    offset = header.data_offset
    chunks = []
    for size in sizes:
        chunks.append(data[offset : offset + size])
        offset += size
    return data[: header.data_offset], chunks


def _header_of(data: bytes):
    from onnxprune.secure.container import read_header

    return read_header(io.BytesIO(data), "<test>")


def assert_one_line_refusal(exc: pytest.ExceptionInfo, *words: str) -> None:
    message = str(exc.value)
    assert message and "\n" not in message
    for word in words:
        assert word in message, message


@pytest.fixture
def key() -> bytes:
    return generate_key()


@pytest.fixture
def plain_model(tmp_path: Path) -> Path:
    return save_plain(tmp_path / "plain")


@pytest.fixture
def small_container(plain_model: Path, key: bytes, tmp_path: Path) -> Path:
    """An encrypted copy of the plain model with small chunks, so chunks can be dropped and reordered."""
    dst = tmp_path / "model.onnx.enc"
    encrypt_file(plain_model, dst, KeySource(key=key), chunk_size=256)
    assert read_container_header(dst).chunk_count >= 5
    return dst


# ---------------------------------------------------------------- round trips


def test_round_trip_raw_key_gives_identical_outputs(plain_model: Path, key: bytes, tmp_path: Path) -> None:
    dst = tmp_path / "model.enc"
    encrypt_file(plain_model, dst, KeySource(key=key))
    assert is_encrypted(dst) and not is_encrypted(plain_model)
    np.testing.assert_array_equal(run(load_session(dst, key=key)), reference_output(plain_model))


def test_round_trip_key_file_and_decrypt_file(plain_model: Path, tmp_path: Path) -> None:
    key_path = tmp_path / "keys" / "model.key"
    key = write_key_file(key_path)
    assert read_key_file(key_path) == key
    dst = tmp_path / "model.enc"
    encrypt_file(plain_model, dst, KeySource(key_file=key_path))
    np.testing.assert_array_equal(run(load_session(dst, key_file=key_path)), reference_output(plain_model))
    written = decrypt_file(dst, tmp_path / "out" / "restored.onnx", KeySource(key_file=key_path))
    assert written == [tmp_path / "out" / "restored.onnx"]
    assert written[0].read_bytes() == plain_model.read_bytes()


def test_passphrase_round_trip_with_lowered_test_cost(plain_model: Path, tmp_path: Path) -> None:
    dst = tmp_path / "model.enc"
    encrypt_file(plain_model, dst, KeySource(passphrase="correct horse", scrypt_n=TEST_SCRYPT_N))
    kdf = read_container_header(dst).kdf
    assert (kdf.name, kdf.n, kdf.r, kdf.p, len(kdf.salt)) == ("scrypt", TEST_SCRYPT_N, 8, 1, 16)
    np.testing.assert_array_equal(
        run(load_session(dst, passphrase="correct horse")), reference_output(plain_model)
    )
    with pytest.raises(OnnxPruneError) as exc:
        load_session(dst, passphrase="wrong horse")
    assert_one_line_refusal(exc, "wrong passphrase")


def test_default_scrypt_cost_is_at_least_2_pow_17(tmp_path: Path) -> None:
    assert SCRYPT_N >= 2**17
    assert KeySource(passphrase="p").scrypt_n >= 2**17
    data = encrypt_bytes(make_model().SerializeToString(), KeySource(passphrase="p"))
    kdf = _header_of(data).kdf
    assert kdf.n >= 2**17 and kdf.r == 8 and kdf.p == 1
    assert decrypt_bytes(data, KeySource(passphrase="p")) == make_model().SerializeToString()


def test_same_passphrase_gives_different_salt_and_nonce() -> None:
    model = make_model().SerializeToString()
    source = KeySource(passphrase="p", scrypt_n=TEST_SCRYPT_N)
    first, second = _header_of(encrypt_bytes(model, source)), _header_of(encrypt_bytes(model, source))
    assert first.kdf.salt != second.kdf.salt and first.nonce != second.nonce


def test_encrypt_bytes_round_trip(key: bytes) -> None:
    model = make_model().SerializeToString()
    data = encrypt_bytes(model, KeySource(key=key), chunk_size=100)
    assert decrypt_bytes(data, KeySource(key=key)) == model


def test_round_trip_without_the_into_methods_of_older_cryptography(
    monkeypatch: pytest.MonkeyPatch, key: bytes
) -> None:
    """Older cryptography lacks encrypt_into/decrypt_into: the fallback must give the same format."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from onnxprune.secure import payload

    class OldAESGCM:
        def __init__(self, data_key: bytes) -> None:
            self._aead = AESGCM(data_key)

        def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
            return self._aead.encrypt(nonce, data, aad)

        def decrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
            return self._aead.decrypt(nonce, data, aad)

    model = make_model().SerializeToString()
    new_format = encrypt_bytes(model, KeySource(key=key), chunk_size=100)
    monkeypatch.setattr(payload, "AESGCM", OldAESGCM)
    old_format = encrypt_bytes(model, KeySource(key=key), chunk_size=100)
    assert decrypt_bytes(new_format, KeySource(key=key)) == model
    monkeypatch.undo()
    assert decrypt_bytes(old_format, KeySource(key=key)) == model


def test_load_session_accepts_plain_model_without_key(plain_model: Path) -> None:
    np.testing.assert_array_equal(run(load_session(plain_model)), reference_output(plain_model))


def test_env_key_source(
    monkeypatch: pytest.MonkeyPatch, plain_model: Path, key: bytes, tmp_path: Path
) -> None:
    monkeypatch.setenv("ONNXPRUNE_TEST_KEY", key.hex())
    dst = tmp_path / "model.enc"
    encrypt_file(plain_model, dst, KeySource.from_env("ONNXPRUNE_TEST_KEY"))
    np.testing.assert_array_equal(run(load_session(dst, key=key)), reference_output(plain_model))
    monkeypatch.delenv("ONNXPRUNE_TEST_KEY")
    with pytest.raises(OnnxPruneError) as exc:
        KeySource.from_env("ONNXPRUNE_TEST_KEY")
    assert_one_line_refusal(exc, "ONNXPRUNE_TEST_KEY")


# ---------------------------------------------------------------- keys


def test_key_file_is_mode_0600_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    key = write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 32 and path.read_text().strip() == key.hex()
    with pytest.raises(OnnxPruneError) as exc:
        write_key_file(path)
    assert_one_line_refusal(exc, "already exists")
    assert read_key_file(path) == key
    assert write_key_file(path, overwrite=True) != key


@pytest.mark.parametrize(
    "encode",
    [
        lambda k: k,
        lambda k: k.hex().encode() + b"\n",
        lambda k: k.hex().upper().encode(),
        lambda k: base64.b64encode(k) + b"\n",
        lambda k: base64.urlsafe_b64encode(k).rstrip(b"="),
    ],
)
def test_read_key_file_formats(tmp_path: Path, key: bytes, encode) -> None:
    path = tmp_path / "k"
    path.write_bytes(encode(key))
    assert read_key_file(path) == key


@pytest.mark.parametrize("content", [b"", b"x" * 31, b"\x01" * 33, b"ab" * 16, b"zz" * 32, b"\xff" * 2000])
def test_read_key_file_refuses_other_content(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(OnnxPruneError) as exc:
        read_key_file(path)
    assert_one_line_refusal(exc, str(path))


def test_missing_or_unreadable_key_file(tmp_path: Path, small_container: Path) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key_file=tmp_path / "absent.key")
    assert_one_line_refusal(exc, "absent.key", "not found")
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key_file=tmp_path)  # a directory cannot be read as a key
    assert_one_line_refusal(exc, "cannot read")


def test_key_source_needs_exactly_one_secret(key: bytes) -> None:
    for kwargs in ({}, {"key": key, "passphrase": "p"}, {"key": b"short"}, {"passphrase": ""}):
        with pytest.raises(OnnxPruneError):
            KeySource(**kwargs)
    with pytest.raises(OnnxPruneError):
        KeySource(passphrase="p", scrypt_n=1000)  # not a power of two
    assert key.hex() not in repr(KeySource(key=key)) and "hunter2" not in repr(
        KeySource(passphrase="hunter2")
    )


# ---------------------------------------------------------------- refusals


def test_wrong_key_is_refused_and_nothing_written(small_container: Path, tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key=generate_key())
    assert_one_line_refusal(exc, "wrong key")
    out = tmp_path / "out"
    with pytest.raises(OnnxPruneError):
        decrypt_file(small_container, out / "m.onnx", KeySource(key=generate_key()))
    assert files_under(out) == []


def test_passphrase_given_for_key_encrypted_file(small_container: Path) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, passphrase="p")
    assert_one_line_refusal(exc, "encrypted with a key")


def test_every_single_byte_flip_is_refused(key: bytes) -> None:
    data = encrypt_bytes(make_model().SerializeToString(), KeySource(key=key), chunk_size=128)
    for position in range(len(data)):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        with pytest.raises(OnnxPruneError):
            decrypt_bytes(bytes(damaged), KeySource(key=key))


def test_every_truncation_is_refused(key: bytes) -> None:
    data = encrypt_bytes(make_model().SerializeToString(), KeySource(key=key), chunk_size=128)
    for length in range(len(data)):
        with pytest.raises(OnnxPruneError):
            decrypt_bytes(data[:length], KeySource(key=key))


def _flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize(
    "where,expected",
    [
        ("header json", "damaged or tampered header"),
        ("header nonce", "wrong key (key check failed; or the header is damaged)"),
        ("header tag", "damaged or tampered header"),
        ("first chunk", "chunk 1 of"),
        ("last chunk", "failed authentication"),
    ],
)
def test_flipped_byte_in_file_is_refused_and_nothing_written(
    small_container: Path, key: bytes, tmp_path: Path, where: str, expected: str
) -> None:
    data = small_container.read_bytes()
    header = _header_of(data)
    if where == "header json":  # still valid JSON, but not the header that was authenticated
        damaged = data.replace(b'"chunk_size":256', b'"chunk_size":257', 1)
    else:
        position = {
            "header nonce": data.index(b'"nonce":"') + 12,
            "header tag": len(header.encoded) + 3,
            "first chunk": header.data_offset + 7,
            "last chunk": len(data) - 20,
        }[where]
        damaged = _flip(data, position)
        if where == "header nonce":  # keep it a valid encoding: another digit, not a flipped bit
            damaged = data[:position] + (b"1" if data[position:position + 1] != b"1" else b"2") + data[position + 1:]
    assert damaged != data
    small_container.write_bytes(damaged)
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key=key)
    assert_one_line_refusal(exc, expected)
    out = tmp_path / "out"
    with pytest.raises(OnnxPruneError):
        decrypt_file(small_container, out / "m.onnx", KeySource(key=key))
    assert files_under(out) == []


@pytest.mark.parametrize(
    "edit,expected",
    [
        ("drop", "truncated"),
        ("drop last", "truncated"),
        ("reorder", "chunk 2 of"),
        ("duplicate", "unexpected bytes"),
        ("truncate", "truncated"),
        ("append", "unexpected bytes"),
        ("swap last two", "failed authentication"),
    ],
)
def test_chunk_stream_edits_are_refused(
    small_container: Path, key: bytes, tmp_path: Path, edit: str, expected: str
) -> None:
    head, chunks = chunks_of(small_container.read_bytes())
    if edit == "drop":
        chunks = chunks[:1] + chunks[2:]
    elif edit == "drop last":
        chunks = chunks[:-1]
    elif edit == "reorder":
        chunks = [chunks[0], chunks[2], chunks[1]] + chunks[3:]
    elif edit == "duplicate":
        chunks = chunks[:2] + chunks[1:]
    elif edit == "truncate":
        chunks = chunks[:-1] + [chunks[-1][:-1]]
    elif edit == "append":
        chunks = chunks + [b"\x00" * 16]
    elif edit == "swap last two":  # same total size; the short final chunk moves
        chunks = chunks[:-2] + [chunks[-1], chunks[-2]]
    small_container.write_bytes(head + b"".join(chunks))
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key=key)
    assert_one_line_refusal(exc, expected)
    out = tmp_path / "out"
    with pytest.raises(OnnxPruneError):
        decrypt_file(small_container, out / "m.onnx", KeySource(key=key))
    assert files_under(out) == []


def test_unknown_version_is_refused(small_container: Path, key: bytes) -> None:
    data = bytearray(small_container.read_bytes())
    data[8:10] = (7).to_bytes(2, "big")
    small_container.write_bytes(bytes(data))
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key=key)
    assert_one_line_refusal(exc, "unsupported", "version 7")


def test_plain_model_where_encrypted_expected(plain_model: Path, key: bytes, tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        load_session(plain_model, key=key)
    assert_one_line_refusal(exc, "not an onnxprune encrypted model")
    with pytest.raises(OnnxPruneError):
        decrypt_file(plain_model, tmp_path / "out" / "m.onnx", KeySource(key=key))
    assert files_under(tmp_path / "out") == []


def test_encrypted_model_where_plain_expected(small_container: Path, key: bytes, tmp_path: Path) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container)
    assert_one_line_refusal(exc, "encrypted model")
    with pytest.raises(OnnxPruneError) as exc:
        ensure_plain_model(small_container)
    assert_one_line_refusal(exc, "encrypted model")
    with pytest.raises(OnnxPruneError) as exc:
        encrypt_file(small_container, tmp_path / "twice.enc", KeySource(key=key))
    assert_one_line_refusal(exc, "encrypted model")
    with pytest.raises(OnnxPruneError) as exc:  # every reader of plain models refuses in the same words
        onnxprune.load(small_container)
    assert_one_line_refusal(exc, "is an encrypted model (decrypt it first)")
    assert not (tmp_path / "twice.enc").exists()


def test_missing_and_non_onnx_inputs(tmp_path: Path, key: bytes) -> None:
    with pytest.raises(OnnxPruneError) as exc:
        encrypt_file(tmp_path / "absent.onnx", tmp_path / "x.enc", KeySource(key=key))
    assert_one_line_refusal(exc, "not found")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xff\xff not a model")
    with pytest.raises(OnnxPruneError) as exc:
        encrypt_file(junk, tmp_path / "x.enc", KeySource(key=key))
    assert_one_line_refusal(exc, "not a valid ONNX model")
    assert not (tmp_path / "x.enc").exists()
    with pytest.raises(OnnxPruneError):
        load_session(tmp_path / "absent.enc", key=key)
    with pytest.raises(OnnxPruneError) as exc:
        load_session(junk)
    assert_one_line_refusal(exc, "onnxruntime cannot load")


def test_session_options_that_would_write_plaintext_are_refused(
    small_container: Path, key: bytes, tmp_path: Path
) -> None:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "leak.onnx")
    with pytest.raises(OnnxPruneError) as exc:
        load_session(small_container, key=key, sess_options=options)
    assert_one_line_refusal(exc, "optimized_model_filepath")
    assert not (tmp_path / "leak.onnx").exists()


# ---------------------------------------------------------------- nothing in clear


def test_container_holds_no_names_in_clear(tmp_path: Path, key: bytes) -> None:
    # One external file per tensor: onnx names those files after the tensors.
    model_path = save_external(tmp_path / "m", one_file=False)
    assert {p.name for p in files_under(tmp_path / "m")} >= {"secret_conv_weight", "secret_gemm_weight"}
    dst = tmp_path / "m.enc"
    encrypt_file(model_path, dst, KeySource(key=key), chunk_size=512)
    data = dst.read_bytes()
    for name in SECRET_NAMES + ["model.onnx"]:
        assert name.encode() not in data, name
    np.testing.assert_array_equal(run(load_session(dst, key=key)), reference_output(model_path))


# ---------------------------------------------------------------- external data


def test_external_data_round_trip(tmp_path: Path, key: bytes) -> None:
    model_path = save_external(tmp_path / "src")
    expected = reference_output(model_path)
    dst = tmp_path / "enc" / "model.enc"
    encrypt_file(model_path, dst, KeySource(key=key), chunk_size=1000)
    header = read_container_header(dst)
    assert [p.kind for p in header.parts] == ["manifest", "model", "external"]
    assert header.parts[2].size == (tmp_path / "src" / "weights.bin").stat().st_size
    np.testing.assert_array_equal(run(load_session(dst, key=key)), expected)

    written = decrypt_file(dst, tmp_path / "out" / "restored.onnx", KeySource(key=key))
    assert written == [tmp_path / "out" / "restored.onnx", tmp_path / "out" / "weights.bin"]
    assert written[1].read_bytes() == (tmp_path / "src" / "weights.bin").read_bytes()
    np.testing.assert_array_equal(reference_output(written[0]), expected)


def test_external_data_in_subfolder_round_trip(tmp_path: Path, key: bytes) -> None:
    model_path = save_external(tmp_path / "src", location="data/weights.bin")
    dst = tmp_path / "model.enc"
    encrypt_file(model_path, dst, KeySource(key=key))
    np.testing.assert_array_equal(run(load_session(dst, key=key)), reference_output(model_path))
    written = decrypt_file(dst, tmp_path / "out" / "m.onnx", KeySource(key=key))
    assert written[1] == tmp_path / "out" / "data" / "weights.bin"
    np.testing.assert_array_equal(reference_output(written[0]), reference_output(model_path))


def _point_tensor_at(model_path: Path, location: str) -> None:
    model = onnx.load(model_path, load_external_data=False)
    entry = next(e for e in model.graph.initializer[0].external_data if e.key == "location")
    entry.value = location
    onnx.save(model, model_path)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "missing"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, key: bytes, kind: str) -> None:
    model_path = save_external(tmp_path / "m")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    location = {
        "dotdot": "../outside.bin",
        "absolute": str(outside),
        "symlink": "link.bin",
        "missing": "absent.bin",
    }[kind]
    if kind == "symlink":
        (tmp_path / "m" / "link.bin").symlink_to(outside)
    _point_tensor_at(model_path, location)
    dst = tmp_path / "m.enc"
    with pytest.raises(OnnxPruneError) as exc:
        encrypt_file(model_path, dst, KeySource(key=key))
    assert_one_line_refusal(exc, "not found" if kind == "missing" else "outside")
    assert not dst.exists()


def test_symlink_inside_the_folder_is_accepted(tmp_path: Path, key: bytes) -> None:
    model_path = save_external(tmp_path / "m")
    (tmp_path / "m" / "real.bin").write_bytes((tmp_path / "m" / "weights.bin").read_bytes())
    (tmp_path / "m" / "weights.bin").unlink()
    (tmp_path / "m" / "weights.bin").symlink_to("real.bin")
    dst = tmp_path / "m.enc"
    encrypt_file(model_path, dst, KeySource(key=key))
    np.testing.assert_array_equal(run(load_session(dst, key=key)), reference_output(model_path))


def test_crafted_manifest_names_cannot_escape_on_decrypt(tmp_path: Path, key: bytes) -> None:
    model = make_model().SerializeToString()
    manifest = Manifest(("../escaped.bin",)).encode()
    parts = [
        PayloadPart("manifest", len(manifest), data=manifest),
        PayloadPart("model", len(model), data=model),
        PayloadPart("external", 4, data=b"abcd"),
    ]
    dst = tmp_path / "crafted.enc"
    with dst.open("wb") as out:
        write_container(out, parts, KeySource(key=key), 64, "<test>")
    with pytest.raises(OnnxPruneError) as exc:
        decrypt_file(dst, tmp_path / "out" / "m.onnx", KeySource(key=key))
    assert_one_line_refusal(exc, "outside")
    assert not (tmp_path / "escaped.bin").exists() and files_under(tmp_path / "out") == []


def test_model_referring_to_files_outside_the_container_is_refused(tmp_path: Path, key: bytes) -> None:
    """A container whose model names an external file it does not hold would make onnxruntime read disk."""
    model = save_external(tmp_path / "m").read_bytes()
    manifest = Manifest(()).encode()
    parts = [
        PayloadPart("manifest", len(manifest), data=manifest),
        PayloadPart("model", len(model), data=model),
    ]
    dst = tmp_path / "m" / "crafted.enc"
    with dst.open("wb") as out:
        write_container(out, parts, KeySource(key=key), 64, "<test>")
    with pytest.raises(OnnxPruneError) as exc:
        load_session(dst, key=key)
    assert_one_line_refusal(exc, "not in the container")


def test_external_location_scan_matches_onnx(tmp_path: Path) -> None:
    """The streaming scan finds the same files as onnx, including tensors inside subgraphs and attributes."""
    then_out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    then_graph = helper.make_graph(
        [
            helper.make_node(
                "Constant", [], ["y"], value=numpy_helper.from_array(np.ones(2, np.float32), "ct")
            )
        ],
        "then",
        [],
        [then_out],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Identity", ["init_else"], ["y"])],
        "else",
        [],
        [then_out],
        [numpy_helper.from_array(np.full(2, 3, np.float32), "init_else")],
    )
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [then_out],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "if.onnx"
    onnx.save(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=False,
        size_threshold=0,
        convert_attribute=True,
    )
    loaded = onnx.load(path, load_external_data=False)
    expected = {
        entry.value
        for tensor in onnx.external_data_helper._get_all_tensors(loaded)
        for entry in tensor.external_data
        if entry.key == "location"
    }
    with path.open("rb") as handle:
        found = external_locations(handle, path.stat().st_size, str(path))
    assert set(found) == expected and len(expected) == 2


def test_set_providers_on_decrypted_session_is_refused(tmp_path: Path, key: bytes) -> None:
    model_path = save_external(tmp_path / "m")
    dst = tmp_path / "m.enc"
    encrypt_file(model_path, dst, KeySource(key=key))
    options = ort.SessionOptions()
    session = load_session(dst, key=key, sess_options=options)
    with pytest.raises(OnnxPruneError):
        session.set_providers(["CPUExecutionProvider"])
    with pytest.raises(OnnxPruneError) as exc:
        load_session(dst, key=key, sess_options=options)
    assert_one_line_refusal(exc, "fresh")
    np.testing.assert_array_equal(run(session), reference_output(model_path))


def test_decrypted_files_replace_atomically(tmp_path: Path, key: bytes) -> None:
    model_path = save_external(tmp_path / "src")
    dst = tmp_path / "model.enc"
    encrypt_file(model_path, dst, KeySource(key=key))
    out = tmp_path / "out"
    decrypt_file(dst, out / "m.onnx", KeySource(key=key))
    before = {p: p.read_bytes() for p in files_under(out)}
    data = bytearray(dst.read_bytes())
    data[-3] ^= 1
    dst.write_bytes(bytes(data))
    with pytest.raises(OnnxPruneError):
        decrypt_file(dst, out / "m.onnx", KeySource(key=key))
    assert {p: p.read_bytes() for p in files_under(out)} == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_cli_encrypt_never_loads_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`onnxprune encrypt` streams: it reads the external-data locations off the protobuf wire and never
    loads the model or its weights (the streaming memory bound), yet still refuses a non-ONNX file."""
    from onnxprune.cli import main
    from onnxprune.graph import load as graph_load

    def no_load(*args, **kwargs):
        raise AssertionError("encrypt loaded the model")

    for name in ("load", "load_model", "load_model_from_string", "load_external_data_for_model"):
        monkeypatch.setattr(onnx, name, no_load)
    monkeypatch.setattr(graph_load, "read_proto", no_load)
    model = save_external(tmp_path / "m")
    key = tmp_path / "k.key"
    write_key_file(key)
    assert main(["encrypt", str(model), "-o", str(tmp_path / "m.enc"), "--key-file", str(key)]) == 0
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    assert main(["encrypt", str(tmp_path / "junk.onnx"), "-o", str(tmp_path / "j.enc"), "--key-file", str(key)]) == 2
