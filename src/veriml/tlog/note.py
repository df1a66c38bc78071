"""C2SP signed notes: text signed by one or more Ed25519 keys.

Follows https://c2sp.org/signed-note (v1.0.0): a note is UTF-8 text ending in a newline, a blank
line, then signature lines ``— <key name> base64(key ID || signature)``. Verifier keys are
``<name>+<hex key ID>+base64(0x01 || public key)``; Go's signer keys
(``PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed)``, golang.org/x/mod/sumdb/note) are
accepted so that keys made by Go tools work here.

Opening a note (:func:`open_note`) follows the spec's rules: signatures from unknown keys are
ignored; a signature from a known key must verify or the whole note is rejected; and at least
one known key must have signed.

>>> from veriml.core.keys import generate_key
>>> signer = NoteSigner("example.com/log", generate_key())
>>> note = open_note(sign_note("hello\\n", [signer]), [NoteVerifier.from_vkey(signer.vkey)])
>>> note.text
'hello\\n'

Pure logic: keys come in as objects or text, notes as bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import ed25519

from veriml.core.errors import Check, FormatError, KeyFileError, SignatureError
from veriml.core.keys import SigningKey, VerifyingKey

__all__ = [
    "ALG_ED25519",
    "MAX_NOTE_SIZE",
    "MAX_SIGNATURES",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "Signer",
    "Verifier",
    "key_hash",
    "open_note",
    "sign_note",
]

ALG_ED25519 = 0x01
MAX_NOTE_SIZE = 1 << 20
MAX_SIGNATURES = 100  # the spec asks for at least 16; Go's note package allows 100
_DASH = "\u2014 "
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX8 = re.compile(r"[0-9a-f]{8}")


def b64decode_strict(text: str, what: str) -> bytes:
    """Standard base64 (RFC 4648 §4), padded, in its one canonical form."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise FormatError(f"{what} is not valid base64", value=text[:80]) from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise FormatError(f"{what} is not canonical base64", value=text[:80])
    return raw


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_key_name(name: str) -> None:
    """Key names are non-empty, with no Unicode spaces and no ``+`` (signed-note, Format)."""
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise FormatError("invalid key name", name=name[:80])


def key_hash(name: str, alg: int, public: bytes) -> int:
    """The key ID: ``SHA-256(name || 0x0A || type || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the key name, the 32-bit key ID and the algorithm's signature bytes."""

    name: str
    key_hash: int
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if not 0 <= self.key_hash < 1 << 32:
            raise FormatError("key ID is not a uint32", key_hash=self.key_hash)

    def to_line(self) -> str:
        """``— <name> base64(key ID || signature)`` followed by a newline."""
        raw = self.key_hash.to_bytes(4, "big") + self.signature
        return f"{_DASH}{self.name} {b64encode(raw)}\n"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """Parse one signature line, without its newline."""
        if not line.startswith(_DASH):
            raise FormatError("signature line does not start with an em dash", line=line[:80])
        name, sep, encoded = line[len(_DASH) :].partition(" ")
        if not sep:
            raise FormatError("signature line has no signature", line=line[:80])
        check_key_name(name)
        raw = b64decode_strict(encoded, "signature")
        if len(raw) < 5:
            raise FormatError("signature is too short", name=name, length=len(raw))
        return cls(name, int.from_bytes(raw[:4], "big"), raw[4:])


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise FormatError("note text must end with a newline")
    if _CONTROL.search(text):
        raise FormatError("note text contains a control character")


@dataclass(frozen=True, slots=True)
class Note:
    """A signed note. ``verified`` lists the signatures :func:`open_note` checked against a
    trusted key (empty for a note that was only parsed); it is not part of the wire form."""

    text: str
    signatures: tuple[NoteSignature, ...]
    verified: tuple[NoteSignature, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        _check_text(self.text)
        if not self.signatures:
            raise FormatError("a note needs at least one signature")

    def to_bytes(self) -> bytes:
        """The note as it travels: text, blank line, signature lines (signed-note, Format)."""
        return (self.text + "\n" + "".join(s.to_line() for s in self.signatures)).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, max_size: int = MAX_NOTE_SIZE) -> Note:
        """Parse a note without checking any signature (see :func:`open_note`)."""
        # 1. Bound the size before decoding anything.
        if len(data) > max_size:
            raise FormatError("note is too large", size=len(data), limit=max_size)
        # 2. Valid UTF-8 with no control characters but newline.
        try:
            whole = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError("note is not valid UTF-8", offset=exc.start) from exc
        if _CONTROL.search(whole):
            raise FormatError("note contains a control character")
        # 3. The text is separated from the signatures by the last blank line.
        split = whole.rfind("\n\n")
        if split < 0 or not whole.endswith("\n"):
            raise FormatError("note has no blank line before its signatures")
        text, lines = whole[: split + 1], whole[split + 2 : -1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise FormatError("note has too many signatures", count=len(lines))
        # 4. Every remaining line is a signature line.
        return cls(text, tuple(NoteSignature.from_line(line) for line in lines))

    def add_signatures(self, *signatures: NoteSignature) -> Note:
        """This note with more signatures (e.g. witness cosignatures) appended; a signature
        whose key name and ID are already present replaces nothing and is dropped."""
        have = {(s.name, s.key_hash) for s in self.signatures}
        extra: list[NoteSignature] = []
        for s in signatures:
            if (s.name, s.key_hash) not in have:
                have.add((s.name, s.key_hash))
                extra.append(s)
        if len(self.signatures) + len(extra) > MAX_SIGNATURES:
            raise FormatError("note would have too many signatures", count=len(have))
        return Note(self.text, self.signatures + tuple(extra), self.verified)


class Signer(Protocol):
    """Anything that signs note text under a key name and key ID."""

    @property
    def name(self) -> str: ...

    @property
    def key_hash(self) -> int: ...

    def sign(self, message: bytes) -> bytes: ...


class Verifier(Protocol):
    """Anything that checks a note signature; it raises :class:`SignatureError` on failure.
    (:class:`~veriml.tlog.cosignature.CosignatureVerifier` returns the cosigned timestamp.)"""

    @property
    def name(self) -> str: ...

    @property
    def key_hash(self) -> int: ...

    def verify(self, message: bytes, signature: bytes) -> object: ...


def _ed25519_key(key: SigningKey) -> bytes:
    if not isinstance(key.key, ed25519.Ed25519PrivateKey):
        raise KeyFileError("signed notes need an Ed25519 key", kind=key.kind)
    return key.public.raw()


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """Signs notes with an Ed25519 key under ``name`` (signature type 0x01)."""

    name: str
    key: SigningKey

    def __post_init__(self) -> None:
        check_key_name(self.name)
        _ed25519_key(self.key)

    @property
    def key_hash(self) -> int:
        return key_hash(self.name, ALG_ED25519, self.key.public.raw())

    @property
    def vkey(self) -> str:
        """The verifier key text: ``name+hash+base64(0x01 || public key)``."""
        raw = bytes([ALG_ED25519]) + self.key.public.raw()
        return f"{self.name}+{self.key_hash:08x}+{b64encode(raw)}"

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)

    @classmethod
    def from_skey(cls, text: str) -> NoteSigner:
        """Load a Go-format signer key ``PRIVATE+KEY+<name>+<hash>+base64(0x01 || seed)``."""
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise KeyFileError("not a signed-note signer key")
        name, hash_hex, encoded = parts[2:]
        check_key_name(name)
        raw = b64decode_strict(encoded, "signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519 or not _HEX8.fullmatch(hash_hex):
            raise KeyFileError("signer key is not an Ed25519 key", name=name)
        signer = cls(name, SigningKey(ed25519.Ed25519PrivateKey.from_private_bytes(raw[1:])))
        if signer.key_hash != int(hash_hex, 16):
            raise KeyFileError("signer key ID does not match the key", name=name)
        return signer

    def __repr__(self) -> str:
        return f"NoteSigner({self.vkey})"


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """Checks Ed25519 note signatures for one key name and key ID."""

    name: str
    key_hash: int
    key: VerifyingKey

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_ED25519]) + self.key.raw()
        return f"{self.name}+{self.key_hash:08x}+{b64encode(raw)}"

    def verify(self, message: bytes, signature: bytes) -> None:
        """Raise :class:`SignatureError` unless ``signature`` is this key's over ``message``."""
        try:
            self.key.verify(signature, message)
        except SignatureError as exc:
            raise SignatureError(
                "note signature does not verify", check=Check.NOTE_SIGNATURE, key=self.name
            ) from exc

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        """Parse ``name+hash+base64(0x01 || public key)``; the ID must match the key."""
        name, alg, public, hash_value = parse_vkey(text)
        if alg != ALG_ED25519 or len(public) != 32:
            raise FormatError("verifier key is not an Ed25519 note key", name=name, type=alg)
        if key_hash(name, alg, public) != hash_value:
            raise FormatError("verifier key ID does not match the key", name=name)
        return cls(name, hash_value, VerifyingKey.from_raw_ed25519(public))


def parse_vkey(text: str) -> tuple[str, int, bytes, int]:
    """Split a verifier key into (name, signature type, public key, key ID)."""
    parts = text.strip().split("+", 2)
    if len(parts) != 3 or not _HEX8.fullmatch(parts[1]):
        raise FormatError("not a verifier key (name+hash+base64)", vkey=text[:120])
    name, hash_hex, encoded = parts
    check_key_name(name)
    raw = b64decode_strict(encoded, "verifier key")
    if len(raw) < 2:
        raise FormatError("verifier key has no key material", name=name)
    return name, raw[0], raw[1:], int(hash_hex, 16)


def sign_note(text: str, signers: Sequence[Signer]) -> bytes:
    """Sign ``text`` (which must end in a newline) with every signer, in order."""
    _check_text(text)
    message = text.encode()
    signatures = tuple(NoteSignature(s.name, s.key_hash, s.sign(message)) for s in signers)
    return Note(text, signatures).to_bytes()


def open_note(data: bytes, verifiers: Sequence[Verifier], *, max_size: int = MAX_NOTE_SIZE) -> Note:
    """Parse ``data`` and check its signatures against ``verifiers``.

    Returns the note with ``verified`` set to the signatures made by known keys. Raises
    :class:`FormatError` for a malformed note and :class:`SignatureError` if a known key's
    signature fails or if no known key signed.
    """
    note = Note.from_bytes(data, max_size=max_size)
    known = {(v.name, v.key_hash): v for v in verifiers}
    message = note.text.encode()
    verified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in note.signatures:
        ident = (sig.name, sig.key_hash)
        # 1. Ignore unknown keys (matching name or ID alone is not enough) and repeats.
        if ident not in known or ident in seen:
            continue
        seen.add(ident)
        # 2. A known key's signature must verify, or the whole note is rejected.
        try:
            known[ident].verify(message, sig.signature)
        except SignatureError as exc:
            raise SignatureError(
                "a trusted key's signature on the note does not verify",
                check=Check.NOTE_SIGNATURE,
                key=sig.name,
                key_hash=f"{sig.key_hash:08x}",
            ) from exc
        verified.append(sig)
    # 3. At least one known key must have signed.
    if not verified:
        raise SignatureError(
            "no trusted key signed the note",
            check=Check.NOTE_SIGNERS,
            signed_by=",".join(sorted({s.name for s in note.signatures})),
            trusted=",".join(sorted({v.name for v in verifiers})),
        )
    return Note(note.text, note.signatures, tuple(verified))
