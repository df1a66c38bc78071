"""The one digest type of veriml: ``sha256:<64 lowercase hex>``."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from veriml.core.errors import FormatError

__all__ = ["Digest", "sha256_stream"]

_ALGORITHM = "sha256"
_HEX_LEN = 64
_HEX = frozenset("0123456789abcdef")
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A SHA-256 digest. Its text form is ``sha256:<hex>``; it compares by value.

    >>> Digest.of(b"abc").hex[:16]
    'ba7816bf8f01cfea'
    >>> str(Digest.from_text("sha256:" + "00" * 32)).startswith("sha256:0000")
    True
    """

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != 32:
            raise FormatError("a SHA-256 digest is 32 bytes", got=len(self.raw))

    @classmethod
    def of(cls, data: bytes) -> Digest:
        """The SHA-256 digest of ``data``."""
        return cls(hashlib.sha256(data).digest())

    @classmethod
    def of_chunks(cls, chunks: Iterable[bytes | memoryview]) -> Digest:
        """The SHA-256 digest of the concatenation of ``chunks``, without joining them."""
        h = hashlib.sha256()
        for chunk in chunks:
            h.update(chunk)
        return cls(h.digest())

    @classmethod
    def from_hex(cls, text: str) -> Digest:
        if len(text) != _HEX_LEN or not set(text) <= _HEX:
            raise FormatError("a SHA-256 digest is 64 lowercase hex digits", got=text[:80])
        return cls(bytes.fromhex(text))

    @classmethod
    def from_text(cls, text: str) -> Digest:
        """Parse ``sha256:<hex>``; anything else (other algorithms, upper case) is refused."""
        algorithm, sep, hexpart = text.partition(":")
        if not sep or algorithm != _ALGORITHM:
            raise FormatError("a digest is written sha256:<hex>", got=text[:80])
        return cls.from_hex(hexpart)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def to_text(self) -> str:
        return f"{_ALGORITHM}:{self.raw.hex()}"

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"Digest('{self.to_text()}')"


def sha256_stream(stream: BinaryIO, *, chunk_size: int = CHUNK_SIZE) -> tuple[Digest, int]:
    """Hash a stream in chunks; return its digest and length. Never holds it whole."""
    h = hashlib.sha256()
    size = 0
    while chunk := stream.read(chunk_size):
        h.update(chunk)
        size += len(chunk)
    return Digest(h.digest()), size
