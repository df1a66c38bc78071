"""Signing keys: Ed25519 (nodes, logs, witnesses) and EC P-256/P-384 (model publishers).

Private keys are PKCS#8 PEM, optionally encrypted with a passphrase, written with mode 0600.
Public keys are SubjectPublicKeyInfo PEM. A key's id is the digest of its DER
SubjectPublicKeyInfo, ``sha256:<hex>``, so the same key has the same id whatever file holds it.
Keys never print their private part: ``repr`` shows the kind and the id only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from veriml.core.digest import Digest
from veriml.core.errors import KeyFileError, SignatureError

__all__ = [
    "KeyKind",
    "SigningKey",
    "VerifyingKey",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "write_private_file",
]

KeyKind = Literal["ed25519", "ec"]
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
MAX_KEY_FILE = 64 * 1024
_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


def _ec_hash(curve: ec.EllipticCurve) -> hashes.HashAlgorithm:
    return hashes.SHA384() if curve.key_size >= 384 else hashes.SHA256()


@dataclass(frozen=True, slots=True, repr=False)
class VerifyingKey:
    """A public key that checks signatures. :meth:`verify` raises; it never returns ``False``."""

    key: PublicKey
    # Derived once: ids are looked up on every signature made or checked.
    _key_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.key, ec.EllipticCurvePublicKey) and self.key.curve.name not in {
            "secp256r1",
            "secp384r1",
        }:
            raise KeyFileError("EC keys must be on P-256 or P-384", curve=self.key.curve.name)
        object.__setattr__(self, "_key_id", Digest.of(self.spki_der()).to_text())

    @property
    def kind(self) -> KeyKind:
        return "ed25519" if isinstance(self.key, ed25519.Ed25519PublicKey) else "ec"

    def spki_der(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def key_id(self) -> str:
        """``sha256:<hex>`` of the DER SubjectPublicKeyInfo."""
        return self._key_id

    def raw(self) -> bytes:
        """The 32 raw bytes of an Ed25519 public key (as signed notes and cosignatures use)."""
        if not isinstance(self.key, ed25519.Ed25519PublicKey):
            raise KeyFileError("raw public bytes exist for Ed25519 keys only", kind=self.kind)
        return self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    def to_pem(self) -> bytes:
        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is this key's over ``data``."""
        try:
            if isinstance(self.key, ed25519.Ed25519PublicKey):
                self.key.verify(signature, data)
            else:
                self.key.verify(signature, data, ec.ECDSA(_ec_hash(self.key.curve)))
        except InvalidSignature as exc:
            raise SignatureError("signature does not verify", keyid=self.key_id) from exc

    @classmethod
    def from_pem(cls, data: bytes) -> VerifyingKey:
        if len(data) > MAX_KEY_FILE:
            raise KeyFileError("public key file is too large", size=len(data))
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError("not a PEM public key", reason=str(exc)) from exc
        if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey):
            raise KeyFileError("unsupported public key type", type=type(key).__name__)
        return cls(key)

    @classmethod
    def from_raw_ed25519(cls, raw: bytes) -> VerifyingKey:
        try:
            return cls(ed25519.Ed25519PublicKey.from_public_bytes(raw))
        except ValueError as exc:
            raise KeyFileError("not a raw Ed25519 public key", length=len(raw)) from exc

    def __repr__(self) -> str:
        return f"VerifyingKey({self.kind}, {self.key_id})"


@dataclass(frozen=True, slots=True, repr=False)
class SigningKey:
    """A private key. ``repr`` and ``str`` never reveal key material."""

    key: PrivateKey
    _public: VerifyingKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_public", VerifyingKey(self.key.public_key()))

    @property
    def kind(self) -> KeyKind:
        return "ed25519" if isinstance(self.key, ed25519.Ed25519PrivateKey) else "ec"

    @property
    def public(self) -> VerifyingKey:
        return self._public

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        if isinstance(self.key, ed25519.Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(_ec_hash(self.key.curve)))

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def save(self, path: Path, *, passphrase: bytes | None = None, overwrite: bool = False) -> None:
        """Write the private key (mode 0600) to ``path`` and the public key to ``path.pub``."""
        write_private_file(path, self.to_pem(passphrase), overwrite=overwrite)
        pub = path.with_name(path.name + ".pub")
        if pub.exists() and not overwrite:
            raise KeyFileError("refusing to overwrite an existing file", path=str(pub))
        pub.write_bytes(self.public.to_pem())

    def __repr__(self) -> str:
        return f"SigningKey({self.kind}, {self.key_id})"


def generate_key(kind: KeyKind = "ed25519", *, curve: str = "P-256") -> SigningKey:
    """A new key: Ed25519, or EC on ``curve`` (``P-256`` or ``P-384``)."""
    if kind == "ed25519":
        return SigningKey(ed25519.Ed25519PrivateKey.generate())
    if kind == "ec":
        if curve not in _EC_CURVES:
            raise KeyFileError("EC curve must be P-256 or P-384", curve=curve)
        return SigningKey(ec.generate_private_key(_EC_CURVES[curve]))
    raise KeyFileError("key type must be ed25519 or ec", type=kind)


def write_private_file(path: Path, data: bytes, *, overwrite: bool = False) -> None:
    """Write secret bytes so that no other user can ever read them, even briefly."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as exc:
        raise KeyFileError("refusing to overwrite an existing file", path=str(path)) from exc
    except OSError as exc:
        raise KeyFileError("cannot write key file", path=str(path), reason=exc.strerror) from exc
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _read_key_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_KEY_FILE:
            raise KeyFileError("key file is too large", path=str(path), size=size)
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError("cannot read key file", path=str(path), reason=exc.strerror) from exc


def load_private_key(
    source: Path | bytes, *, passphrase: bytes | None = None, kind: KeyKind | None = None
) -> SigningKey:
    """Load a PEM private key from a file or bytes; optionally require its ``kind``."""
    data = _read_key_file(source) if isinstance(source, Path) else source
    where = str(source) if isinstance(source, Path) else "<bytes>"
    try:
        key = serialization.load_pem_private_key(data, password=passphrase or None)
    except TypeError as exc:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        raise KeyFileError("key passphrase missing or not needed", path=where) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(
            "not a usable PEM private key (or wrong passphrase)", path=where
        ) from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        raise KeyFileError("unsupported private key type", path=where, type=type(key).__name__)
    signing = SigningKey(key)
    if kind is not None and signing.kind != kind:
        raise KeyFileError(f"expected an {kind} key", path=where, got=signing.kind)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signing.public  # noqa: B018 - validates the curve
    return signing


def load_public_key(source: Path | bytes, *, kind: KeyKind | None = None) -> VerifyingKey:
    """Load a PEM public key from a file or bytes; optionally require its ``kind``."""
    data = _read_key_file(source) if isinstance(source, Path) else source
    key = VerifyingKey.from_pem(data)
    if kind is not None and key.kind != kind:
        where = str(source) if isinstance(source, Path) else "<bytes>"
        raise KeyFileError(f"expected an {kind} public key", path=where, got=key.kind)
    return key
