"""Signing and verifying model folders: a verified folder is exactly what the key signed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from model_builders import ec_key_pair

from veriml.core import generate_key
from veriml.core.errors import (
    DigestMismatchError,
    InvalidModelError,
    KeyFileError,
    SignatureError,
    VerificationError,
)
from veriml.models import model_digest, sign_model, verify_model
from veriml.models.signing import signed_digest


def test_verify_returns_the_folder_digest_it_signed(
    model_dir: Path, ec_keys: tuple[Path, Path]
) -> None:
    key, pub = ec_keys
    sig = sign_model(model_dir, key)
    assert sig == model_dir / "model.sig"
    assert verify_model(model_dir, pub) == model_digest(model_dir) == signed_digest(sig)


def test_p384_keys_sign_and_verify(model_dir: Path, tmp_path: Path) -> None:
    key, pub = ec_key_pair(tmp_path / "k384", curve="P-384")
    sign_model(model_dir, key)
    assert verify_model(model_dir, pub) == model_digest(model_dir)


def test_signature_outside_the_folder(model_dir: Path, ec_keys: tuple[Path, Path]) -> None:
    key, pub = ec_keys
    sig = sign_model(model_dir, key, signature=model_dir.parent / "tiny.sig")
    assert not (model_dir / "model.sig").exists()
    assert verify_model(model_dir, pub, signature=sig) == model_digest(model_dir)


def test_signature_with_another_name_inside_the_folder_is_excluded(
    model_dir: Path, ec_keys: tuple[Path, Path]
) -> None:
    key, pub = ec_keys
    sig = sign_model(model_dir, key, signature=model_dir / "release.sig")
    assert verify_model(model_dir, pub, signature=sig) == model_digest(
        model_dir, ignore=["release.sig"]
    )


def test_a_file_modified_after_signing_is_named(
    model_dir: Path, ec_keys: tuple[Path, Path]
) -> None:
    key, pub = ec_keys
    sign_model(model_dir, key)
    with (model_dir / "weights.bin").open("r+b") as f:
        f.write(b"\xff")
    with pytest.raises(DigestMismatchError, match=r"weights\.bin was modified") as info:
        verify_model(model_dir, pub)
    assert info.value.check == "file-digest"


def test_added_removed_and_renamed_files_fail(model_dir: Path, ec_keys: tuple[Path, Path]) -> None:
    key, pub = ec_keys
    sign_model(model_dir, key)
    (model_dir / "extra.txt").write_text("unsigned")
    with pytest.raises(VerificationError, match=r"extra\.txt is not covered"):
        verify_model(model_dir, pub)
    (model_dir / "extra.txt").unlink()
    (model_dir / "README.md").rename(model_dir / "README.txt")  # same digest order, new name
    with pytest.raises(VerificationError, match=r"README\.md is missing") as info:
        verify_model(model_dir, pub)
    assert info.value.check == "files"


def test_a_different_key_is_refused(model_dir: Path, ec_key: Path, tmp_path: Path) -> None:
    sign_model(model_dir, ec_key)
    _, other_pub = ec_key_pair(tmp_path / "other")
    with pytest.raises(SignatureError) as info:
        verify_model(model_dir, other_pub)
    assert info.value.check == "public-key"


def _rewrite_bundle(sig: Path, edit: object) -> None:
    bundle = json.loads(sig.read_text())
    edit(bundle)  # type: ignore[operator]
    sig.write_text(json.dumps(bundle))


def test_a_forged_signature_is_refused(model_dir: Path, ec_keys: tuple[Path, Path]) -> None:
    key, pub = ec_keys
    sig = sign_model(model_dir, key)

    def flip(bundle: dict) -> None:  # type: ignore[type-arg]
        raw = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))
        raw[-1] ^= 1
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(raw).decode()

    _rewrite_bundle(sig, flip)
    with pytest.raises(SignatureError) as info:
        verify_model(model_dir, pub)
    assert info.value.check == "signature"


def test_a_tampered_statement_is_refused(model_dir: Path, ec_keys: tuple[Path, Path]) -> None:
    key, pub = ec_keys
    sig = sign_model(model_dir, key)

    def retarget(bundle: dict) -> None:  # type: ignore[type-arg]
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        statement["predicate"]["resources"][0]["digest"] = "00" * 32
        payload = json.dumps(statement).encode()
        bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()

    _rewrite_bundle(sig, retarget)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model(model_dir, pub)


@pytest.mark.parametrize("content", [b"", b"not json", b"[]", b'{"mediaType": 1}'])
def test_a_malformed_bundle_is_a_signature_error(
    model_dir: Path, ec_keys: tuple[Path, Path], content: bytes
) -> None:
    (model_dir / "model.sig").write_bytes(content)
    with pytest.raises(SignatureError) as info:
        verify_model(model_dir, ec_keys[1])
    assert info.value.check == "signature-file"


def test_a_missing_signature_is_a_signature_error(
    model_dir: Path, ec_keys: tuple[Path, Path]
) -> None:
    with pytest.raises(SignatureError, match="cannot read the signature"):
        verify_model(model_dir, ec_keys[1])


def test_ed25519_keys_cannot_sign_models(model_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "node.key"
    generate_key("ed25519").save(key)
    with pytest.raises(KeyFileError, match="EC P-256 or P-384"):
        sign_model(model_dir, key)
    assert not (model_dir / "model.sig").exists()


def test_passphrase_protected_keys_sign(model_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "enc.key"
    generate_key("ec").save(key, passphrase=b"correct horse")
    with pytest.raises(KeyFileError):
        sign_model(model_dir, key, passphrase=b"wrong")
    sign_model(model_dir, key, passphrase=b"correct horse")
    assert verify_model(model_dir, Path(f"{key}.pub")) == model_digest(model_dir)


def test_a_symlinked_file_cannot_be_signed(model_dir: Path, ec_key: Path) -> None:
    os.symlink(model_dir / "weights.bin", model_dir / "alias.bin")
    with pytest.raises(InvalidModelError, match="symlink"):
        sign_model(model_dir, ec_key)
