from __future__ import annotations

import stat
from pathlib import Path

import pytest

from veriml.core import generate_key, load_private_key, load_public_key
from veriml.core.errors import KeyFileError, SignatureError


@pytest.mark.parametrize(
    ("kind", "curve"), [("ed25519", "P-256"), ("ec", "P-256"), ("ec", "P-384")]
)
def test_saved_key_loads_back_with_the_same_id_and_signs(
    tmp_path: Path, kind: str, curve: str
) -> None:
    key = generate_key(kind, curve=curve)  # type: ignore[arg-type]
    path = tmp_path / "key.pem"
    key.save(path)
    loaded = load_private_key(path)
    public = load_public_key(tmp_path / "key.pem.pub")
    assert loaded.key_id == key.key_id == public.key_id
    public.verify(loaded.sign(b"message"), b"message")


def test_private_key_file_is_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    generate_key().save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_passphrase_protects_the_key(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    key = generate_key()
    key.save(path, passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_private_key(path, passphrase=b"correct horse").key_id == key.key_id
    with pytest.raises(KeyFileError):
        load_private_key(path, passphrase=b"wrong")
    with pytest.raises(KeyFileError):
        load_private_key(path)


def test_existing_key_is_never_overwritten_by_default(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    generate_key().save(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="overwrite"):
        generate_key().save(path)
    assert path.read_bytes() == before


def test_repr_never_shows_private_material() -> None:
    key = generate_key()
    pem = key.to_pem().decode()
    body = "".join(pem.splitlines()[1:-1])
    assert body not in repr(key)
    assert body not in str(key)
    assert key.key_id in repr(key)


def test_wrong_key_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k"
    generate_key("ec").save(path)
    with pytest.raises(KeyFileError, match="ed25519"):
        load_private_key(path, kind="ed25519")


def test_signature_by_another_key_is_rejected() -> None:
    a, b = generate_key(), generate_key()
    with pytest.raises(SignatureError):
        b.public.verify(a.sign(b"m"), b"m")


@pytest.mark.parametrize("data", [b"", b"not a key", b"-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_garbage_key_files_get_a_clear_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(data)
    with pytest.raises(KeyFileError):
        load_public_key(path)
    with pytest.raises(KeyFileError):
        load_private_key(path)


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"missing\.pem"):
        load_private_key(tmp_path / "missing.pem")
