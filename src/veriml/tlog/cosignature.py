"""C2SP tlog-cosignature ``cosignature/v1``: timestamped Ed25519 checkpoint cosignatures.

Follows https://c2sp.org/tlog-cosignature, "Format" and "Ed25519 signed message": the key ID
uses signature type ``0x04``; the signature is ``u64 timestamp || Ed25519 signature`` (72
bytes, big-endian timestamp) over::

    cosignature/v1
    time <timestamp>
    <the whole checkpoint note text>

A :class:`CosignatureVerifier` fits wherever a note verifier does (it has ``name``,
``key_hash`` and ``verify``); its ``verify`` returns the cosigned timestamp.

>>> from veriml.core.keys import generate_key
>>> from veriml.tlog.checkpoint import Checkpoint
>>> witness = CosignatureSigner("witness.example/w1", generate_key())
>>> cp = Checkpoint("example.com/log", 1, bytes(32))
>>> sig = witness.sign(cp, 1700000000)
>>> CosignatureVerifier.from_vkey(witness.vkey).verify(cp.to_bytes(), sig.signature)
1700000000
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from veriml.core.errors import Check, FormatError, SignatureError
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.note import (
    NoteSignature,
    NoteSigner,
    check_key_name,
    key_hash,
    parse_vkey,
)

__all__ = [
    "ALG_COSIGNATURE_V1",
    "CosignatureSigner",
    "CosignatureVerifier",
    "cosigned_message",
]

ALG_COSIGNATURE_V1 = 0x04
_SIGNATURE_SIZE = 8 + 64
_MAX_TIMESTAMP = (1 << 63) - 1


def cosigned_message(checkpoint_text: bytes, timestamp: int) -> bytes:
    """The message a ``cosignature/v1`` signs: header, time line, then the note text."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise FormatError("cosignature timestamp out of range", timestamp=timestamp)
    return b"cosignature/v1\ntime %d\n" % timestamp + checkpoint_text


@dataclass(frozen=True, slots=True)
class CosignatureSigner:
    """A witness's Ed25519 cosigning key under ``name`` (signature type 0x04)."""

    name: str
    key: SigningKey

    def __post_init__(self) -> None:
        # NoteSigner checks the name and that the key is Ed25519.
        NoteSigner(self.name, self.key)

    @property
    def key_hash(self) -> int:
        return key_hash(self.name, ALG_COSIGNATURE_V1, self.key.public.raw())

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_COSIGNATURE_V1]) + self.key.public.raw()
        return f"{self.name}+{self.key_hash:08x}+{base64.b64encode(raw).decode()}"

    def sign(self, checkpoint: Checkpoint, timestamp: int) -> NoteSignature:
        """The cosignature line for ``checkpoint`` at ``timestamp`` (POSIX seconds)."""
        message = cosigned_message(checkpoint.to_bytes(), timestamp)
        signature = timestamp.to_bytes(8, "big") + self.key.sign(message)
        return NoteSignature(self.name, self.key_hash, signature)

    def __repr__(self) -> str:
        return f"CosignatureSigner({self.vkey})"


@dataclass(frozen=True, slots=True)
class CosignatureVerifier:
    """Checks ``cosignature/v1`` signatures for one witness key."""

    name: str
    key_hash: int
    key: VerifyingKey

    def __post_init__(self) -> None:
        check_key_name(self.name)

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_COSIGNATURE_V1]) + self.key.raw()
        return f"{self.name}+{self.key_hash:08x}+{base64.b64encode(raw).decode()}"

    def verify(self, message: bytes, signature: bytes) -> int:
        """Check a cosignature over the note text ``message``; return its timestamp."""
        # 1. The signature is a timestamped_signature: u64 timestamp, 64-byte Ed25519.
        if len(signature) != _SIGNATURE_SIZE:
            raise SignatureError(
                "cosignature has the wrong length",
                check=Check.COSIGNATURE_LENGTH,
                key=self.name,
                length=len(signature),
            )
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise SignatureError("cosignature timestamp exceeds 2^63-1", key=self.name)
        # 2. The Ed25519 signature covers header, time line and the checkpoint text.
        try:
            self.key.verify(signature[8:], cosigned_message(message, timestamp))
        except SignatureError as exc:
            raise SignatureError(
                "cosignature does not verify", check=Check.COSIGNATURE, key=self.name
            ) from exc
        return timestamp

    @classmethod
    def from_vkey(cls, text: str) -> CosignatureVerifier:
        """Parse ``name+hash+base64(0x04 || public key)``; the ID must match the key."""
        name, alg, public, hash_value = parse_vkey(text)
        if alg != ALG_COSIGNATURE_V1 or len(public) != 32:
            raise FormatError("verifier key is not a cosignature/v1 key", name=name, type=alg)
        if key_hash(name, alg, public) != hash_value:
            raise FormatError("verifier key ID does not match the key", name=name)
        return cls(name, hash_value, VerifyingKey.from_raw_ed25519(public))
