"""C2SP tlog-checkpoint: the body of a log's signed tree head.

Follows https://c2sp.org/tlog-checkpoint (v1.0.0), "Note text": the origin line, the tree size
in decimal with no leading zeroes, the base64 root hash, then optional non-empty extension
lines, each ending in a newline. The text round-trips exactly: :meth:`Checkpoint.from_text`
accepts only the one canonical form :meth:`Checkpoint.to_text` writes.

>>> cp = Checkpoint("example.com/log", 0, bytes.fromhex(
...     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"))
>>> cp.to_text()
'example.com/log\\n0\\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\\n'
>>> Checkpoint.from_text(cp.to_text()) == cp
True
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from veriml.core.errors import Check, FormatError, SignatureError
from veriml.tlog.merkle import HASH_SIZE, MAX_SIZE
from veriml.tlog.note import (
    MAX_NOTE_SIZE,
    Note,
    Signer,
    Verifier,
    b64decode_strict,
    open_note,
    sign_note,
)

__all__ = ["Checkpoint", "open_checkpoint", "parse_size", "sign_checkpoint"]

MAX_CHECKPOINT_SIZE = 64 * 1024


def parse_size(text: str, what: str = "tree size") -> int:
    """ASCII decimal, no leading zeroes (``0`` alone for empty), below 2**63."""
    if not (text.isascii() and text.isdigit()) or (len(text) > 1 and text[0] == "0"):
        raise FormatError(f"{what} is not a canonical decimal", value=text[:40])
    if len(text) > 19 or int(text) >= MAX_SIZE:
        raise FormatError(f"{what} is too large", value=text[:40])
    return int(text)


def _check_line(line: str, what: str) -> None:
    if not line or "\n" in line or any(ord(c) < 0x20 for c in line):
        raise FormatError(f"{what} must be a non-empty line without control characters")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: ``origin``, ``size``, ``root_hash`` and opaque ``extensions``."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if not 0 <= self.size < MAX_SIZE:
            raise FormatError("checkpoint size out of range", size=self.size)
        if len(self.root_hash) != HASH_SIZE:
            raise FormatError("checkpoint root hash must be 32 bytes", length=len(self.root_hash))
        for line in self.extensions:
            _check_line(line, "checkpoint extension line")

    def to_text(self) -> str:
        root = base64.b64encode(self.root_hash).decode("ascii")
        return "".join(
            f"{line}\n" for line in (self.origin, str(self.size), root, *self.extensions)
        )

    def to_bytes(self) -> bytes:
        return self.to_text().encode()

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body (the note text, final newline included)."""
        if len(text) > MAX_CHECKPOINT_SIZE:
            raise FormatError("checkpoint is too large", size=len(text))
        if not text.endswith("\n"):
            raise FormatError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError("checkpoint needs origin, size and root hash lines", lines=len(lines))
        origin, size, root, *extensions = lines
        _check_line(origin, "checkpoint origin")
        root_hash = b64decode_strict(root, "checkpoint root hash")
        return cls(origin, parse_size(size), root_hash, tuple(extensions))

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        if len(data) > MAX_CHECKPOINT_SIZE:
            raise FormatError("checkpoint is too large", size=len(data))
        try:
            return cls.from_text(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise FormatError("checkpoint is not valid UTF-8") from exc


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[Signer]) -> bytes:
    """The checkpoint as a signed note (the log's key first, by convention)."""
    return sign_note(checkpoint.to_text(), signers)


def open_checkpoint(
    data: bytes,
    log: Verifier,
    *,
    others: Sequence[Verifier] = (),
    origin: str | None = None,
    max_size: int = MAX_NOTE_SIZE,
) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint: the log's key must have signed it, ``others`` (e.g.
    witnesses) are checked if present, and ``origin``, when given, must match.

    Returns the parsed checkpoint and the note, whose ``verified`` lists the good signatures.
    """
    # 1. Open the note: bad signatures by any known key reject it.
    note = open_note(data, [log, *others], max_size=max_size)
    # 2. The log itself must be among the signers; a witness alone is not enough.
    if not any(s.name == log.name and s.key_hash == log.key_hash for s in note.verified):
        raise SignatureError(
            "the log's key did not sign the checkpoint", check=Check.LOG_SIGNATURE, key=log.name
        )
    # 3. Parse the body and check which log it claims to be.
    checkpoint = Checkpoint.from_text(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise SignatureError(
            "checkpoint is for another log",
            check=Check.ORIGIN,
            expected=origin,
            got=checkpoint.origin,
        )
    return checkpoint, note
