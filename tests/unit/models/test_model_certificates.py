"""Certificate-signed OMS bundles verify offline against the roots the verifier trusts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from model_builders import certificate_chain
from model_signing import hashing as ms_hashing
from model_signing import signing as ms_signing

from veriml.core.errors import DigestMismatchError, KeyFileError, SignatureError
from veriml.models import model_digest, sign_model, verify_model_certificate


def sign_with_certificate(model: Path, cert: Path, key: Path, root: Path) -> Path:
    sig = model / "model.sig"
    ms_signing.Config().use_certificate_signer(
        private_key=key, signing_certificate=cert, certificate_chain=[root]
    ).set_hashing_config(ms_hashing.Config().set_ignored_paths(paths=["model.sig"])).sign(
        model, sig
    )
    return sig


def test_a_certificate_signed_model_verifies_and_names_its_signer(
    model_dir: Path, tmp_path: Path
) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki")
    sign_with_certificate(model_dir, cert, key, root)
    certified = verify_model_certificate(model_dir, [root], identity="publisher@example.com")
    assert certified.digest == model_digest(model_dir)
    assert certified.subject == "CN=Example Publisher"
    assert certified.identities == ("Example Publisher", "publisher@example.com")


def test_another_root_is_not_trusted(model_dir: Path, tmp_path: Path) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki")
    other_root, _, _ = certificate_chain(tmp_path / "other")
    sign_with_certificate(model_dir, cert, key, root)
    with pytest.raises(SignatureError, match="does not chain") as info:
        verify_model_certificate(model_dir, [other_root])
    assert info.value.check == "certificate"


def test_another_identity_is_refused(model_dir: Path, tmp_path: Path) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki")
    sign_with_certificate(model_dir, cert, key, root)
    with pytest.raises(SignatureError, match="another identity") as info:
        verify_model_certificate(model_dir, [root], identity="someone@else.org")
    assert info.value.check == "certificate"


def test_a_certificate_not_for_signing_is_refused(model_dir: Path, tmp_path: Path) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki", can_sign=False)
    sign_with_certificate(model_dir, cert, key, root)
    with pytest.raises(SignatureError, match="cannot sign") as info:
        verify_model_certificate(model_dir, [root])
    assert info.value.check == "certificate"


def test_a_key_signed_bundle_has_no_certificate(
    model_dir: Path, ec_key: Path, tmp_path: Path
) -> None:
    root, _, _ = certificate_chain(tmp_path / "pki")
    sign_model(model_dir, ec_key)
    with pytest.raises(SignatureError, match="no signing certificate"):
        verify_model_certificate(model_dir, [root])


def test_a_modified_file_fails_and_roots_are_required(model_dir: Path, tmp_path: Path) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki")
    sign_with_certificate(model_dir, cert, key, root)
    (model_dir / "README.md").write_text("---\nname: changed\n---\n")
    with pytest.raises(DigestMismatchError, match="README"):
        verify_model_certificate(model_dir, [root])
    with pytest.raises(KeyFileError, match="at least one trusted root"):
        verify_model_certificate(model_dir, [])


def test_cli_verifies_with_a_certificate_chain(model_dir: Path, tmp_path: Path) -> None:
    root, cert, key = certificate_chain(tmp_path / "pki")
    sign_with_certificate(model_dir, cert, key, root)
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "model", "verify", str(model_dir),
         "--certificate-chain", str(root), "--identity", "publisher@example.com", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["digest"] == str(model_digest(model_dir))
    assert info["subject"] == "CN=Example Publisher"
