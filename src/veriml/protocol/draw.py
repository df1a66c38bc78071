"""Per-request randomness the coordinator cannot choose: the epoch beacon (docs/verification.md,
"Randomness").

Which nodes run a request, whether a ``spot:P`` answer is re-executed, and the sampling seed
of an LLM request that gave none are all drawn from one 32-byte **draw secret** per request::

    r = HMAC-SHA256(k_e, "veriml-draw/v1\\n" || request id)

``k_e`` is the coordinator's key for **epoch** ``e``. A ``beacon`` log entry commits to it,
``SHA-256("veriml-beacon/v1\\n" || k_e)``, before the epoch starts, and the next ``beacon``
entry reveals it. So:

- the coordinator cannot choose ``r`` or draw it again (re-dispatching a request changes
  nothing: ``r`` is a function of the committed key and of the client's request id, which
  the client chooses and the SDK checks, and one id names one request); an auditor recomputes
  every ``r`` of an epoch once its key is revealed;
- nodes and clients cannot predict ``r`` while the epoch runs (the key is secret until then);
- the verdict reveals ``r`` itself (``draw``), so a client checks at once everything that
  follows from it (the spot decision, the sampling seed), and the auditor later that it
  follows from the epoch key.

Each use derives its own value: ``SHA-256(tag || r)`` with a tag per purpose, so no use can
be steered through another. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from veriml.core.digest import Digest
from veriml.core.errors import FormatError

__all__ = [
    "BEACON_TAG",
    "DRAW_TAG",
    "KEY_SIZE",
    "Draw",
    "beacon_commitment",
    "derive",
    "draw_secret",
    "sampling_seed",
]

KEY_SIZE: Final = 32
BEACON_TAG: Final = b"veriml-beacon/v1\n"
DRAW_TAG: Final = b"veriml-draw/v1\n"
_HEX64 = re.compile(r"[0-9a-f]{64}")
SEED_BOUND: Final = 1 << 32


def beacon_commitment(key: bytes) -> Digest:
    """``SHA-256("veriml-beacon/v1\\n" || key)``: what a ``beacon`` entry commits to."""
    _check_key(key, "an epoch key")
    return Digest.of(BEACON_TAG + key)


def draw_secret(key: bytes, request_id: str) -> bytes:
    """The request's draw secret ``r`` under epoch key ``key`` (module docstring). The request
    id alone: an LLM request's sampling seed is drawn from ``r``, so ``r`` cannot depend on
    the request's digest, which covers the seed."""
    _check_key(key, "an epoch key")
    return hmac.new(key, DRAW_TAG + request_id.encode(), hashlib.sha256).digest()


def derive(secret: bytes, purpose: bytes) -> bytes:
    """``SHA-256(purpose || r)``: the value one use draws from ``r`` (its own tag each)."""
    _check_key(secret, "a draw secret")
    return hashlib.sha256(purpose + secret).digest()


def sampling_seed(secret: bytes) -> int:
    """The sampling seed of an LLM request that gave none: 32 bits drawn from ``r``."""
    return int.from_bytes(derive(secret, b"veriml-seed/v1\n")[:8], "big") % SEED_BOUND


def _check_key(value: object, what: str) -> None:
    if not isinstance(value, bytes) or len(value) != KEY_SIZE:
        raise FormatError(f"{what} is {KEY_SIZE} bytes")


@dataclass(frozen=True, slots=True)
class Draw:
    """A request's revealed randomness (``{"epoch": e, "secret": hex}`` in the verdict):
    the epoch whose key ``r`` was drawn under, and ``r`` itself."""

    epoch: int
    secret: bytes

    def __post_init__(self) -> None:
        if type(self.epoch) is not int or not 0 <= self.epoch < 1 << 53:
            raise FormatError("a draw epoch is a non-negative integer", got=str(self.epoch)[:40])
        _check_key(self.secret, "a draw secret")

    def matches(self, key: bytes, request_id: str) -> bool:
        """Whether ``r`` is the one epoch key ``key`` gives this request (an auditor's check,
        once the key is revealed)."""
        return hmac.compare_digest(self.secret, draw_secret(key, request_id))

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "secret": self.secret.hex()}

    @classmethod
    def from_json(cls, obj: object) -> Draw:
        if not isinstance(obj, Mapping) or set(obj) != {"epoch", "secret"}:
            raise FormatError('a draw is {"epoch", "secret"}')
        secret = obj["secret"]
        if not isinstance(secret, str) or not _HEX64.fullmatch(secret):
            raise FormatError("a draw secret is 64 lowercase hex digits")
        return cls(obj["epoch"], bytes.fromhex(secret))
