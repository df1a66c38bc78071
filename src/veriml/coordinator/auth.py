"""Signed requests (docs/network.md, "Signed requests"): RFC 9421 HTTP Message Signatures.

A client, a publisher or a disputing party may sign a request with its Ed25519 or EC key
(:mod:`veriml.protocol.http_signatures`: ``X-Veriml-Key``, ``Content-Digest``,
``Signature-Input``, ``Signature``). The coordinator checks, in this order:

1. the signature over the method, the target URI, the authority, the ``Content-Digest`` and
   every meaningful header present (``Idempotency-Key`` above all), its ``created``/``expires``
   window and its tag, from the headers alone, before a byte of the body is read;
2. the body's SHA-256 against the signed ``Content-Digest``, as the body streams (a
   multi-gigabyte upload is checked without being held in memory);
3. the nonce, remembered in the database until the signature has expired, so replicas and
   restarts agree: a request sent twice is refused (403, ``check: "request-replay"``), unless
   the signature covers an ``Idempotency-Key``, whose route then answers the stored answer
   and never acts twice (that is what lets a client retry a request whose answer was lost).

A signature that is present but does not verify is refused (403): it is never ignored. The key
id of the signer is what the coordinator records (a client, a publisher, an account).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from veriml.coordinator.state import started
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Check, ConflictError, FormatError, LimitExceededError, SignatureError
from veriml.core.keys import SigningKey
from veriml.protocol.http_signatures import (
    KEY_HEADER,
    SignedRequest,
    verify_request,
)
from veriml.protocol.http_signatures import sign_request as sign_http_request

__all__ = [
    "CAPABILITY_HEADER",
    "KEY_HEADER",
    "PAYMENT_HEADER",
    "SignedRequest",
    "accept_signature",
    "authorize_read",
    "capability",
    "capability_header",
    "capability_key",
    "payment_from_headers",
    "read_body",
    "read_signed_body",
    "request_signature",
    "sign_request",
]

CAPABILITY_HEADER = "X-Veriml-Capability"
"""A bearer capability to read one request's stored data (returned with its answer)."""
PAYMENT_HEADER = "X-Veriml-Payment"
"""base64 of a DSSE envelope: the payer's signed ``payment`` ledger request for this request's
fees (docs/ledger.md, "Authority"); required when the rules charge ``fee_per_job``."""
_MAX_HEADER = 16 * 1024


def sign_request(
    key: SigningKey,
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers that sign a request of ``body`` to ``url`` (for tests and tools); the
    ``headers`` it will also carry (``Idempotency-Key``, ...) are covered, and returned too."""
    signed = sign_http_request(key, method, url, Digest.of(body), headers)
    return dict(headers or {}) | signed


def request_signature(request: Request) -> SignedRequest | None:
    """Step 1: the request's verified signature, or None when it is unsigned."""
    fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    return verify_request(request.method, str(request.url), fields)


async def accept_signature(
    request: Request, signed: SignedRequest | None, body: Digest, *, idempotent: bool = False
) -> str | None:
    """Steps 2 and 3 for a body whose digest is ``body``: the signer's key id (None when the
    request is unsigned). ``idempotent``: the route answers a repeated ``Idempotency-Key``
    from storage, so a repeated nonce under a covered key is let through to it."""
    if signed is None:
        return None
    key_id = signed.check_body(body)
    covered_key = idempotent and request.headers.get("idempotency-key") is not None
    state = started(request)
    if state is None:
        raise SignatureError("this coordinator cannot check signed requests yet (starting)")
    token = "req:" + hashlib.sha256(f"{key_id}\n{signed.nonce}".encode()).hexdigest()
    try:
        await run_in_threadpool(state.nonces.use, token)
    except ConflictError as exc:
        if not covered_key:
            raise SignatureError(
                "this signed request was sent before (its nonce is used): sign it again",
                check=Check.REQUEST_REPLAY,
                keyid=key_id,
            ) from exc
    return key_id


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, at most ``limit`` bytes: 413 from ``Content-Length`` before a byte is
    read, or as soon as the stream passes the limit (nothing beyond it is held)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitExceededError("request body is too large", size=int(declared), limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceededError("request body is too large", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_signed_body(
    request: Request, limit: int, *, idempotent: bool = False
) -> tuple[bytes, str | None]:
    """A JSON route's body (at most ``limit`` bytes, 413 beyond) and its signer's key id (None
    when unsigned): the signature is checked before the body is read, the digest and the nonce
    after."""
    signed = request_signature(request)
    raw = await read_body(request, limit)
    return raw, await accept_signature(request, signed, Digest.of(raw), idempotent=idempotent)


# -- reading what a request left behind (docs/privacy.md) ---------------------------------------


def capability_key(coordinator: SigningKey) -> bytes:
    """The secret capabilities are derived under: from the coordinator's key, so every replica
    (they share it) and every restart derives the same ones, and nothing more is stored."""
    return hashlib.sha256(b"veriml/capability/v1\n" + coordinator.to_pem()).digest()


def capability(key: bytes, request_id: str) -> str:
    """The capability to read request ``request_id``'s stored data: HMAC-SHA256 under ``key``
    (a bearer token returned to the requester in ``X-Veriml-Capability``)."""
    mac = hmac.new(key, b"read\n" + request_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def capability_header(request: Request, request_id: str) -> dict[str, str]:
    """``X-Veriml-Capability`` for an answer to ``request_id`` (empty before start-up)."""
    state = started(request)
    if state is None:
        return {}
    return {CAPABILITY_HEADER: capability(state.capability_key, request_id)}


def authorize_read(request: Request, answer: Mapping[str, Any]) -> None:
    """Refuse (403, ``check: "access"``) to show a stored answer, or what its request left
    (inputs, canonical request, outputs), to anyone but: everyone, when the requester made it
    public; the holder of its capability; a request signed (RFC 9421) by the requester's key.
    """
    requested = answer.get("request") or {}
    if requested.get("visibility") == "public":
        return
    request_id = str(answer.get("id"))
    presented = request.headers.get(CAPABILITY_HEADER)
    state = started(request)
    if (
        presented
        and state is not None
        and hmac.compare_digest(
            presented.encode(), capability(state.capability_key, request_id).encode()
        )
    ):
        return
    signed = request_signature(request)
    if signed is not None:
        signed.check_body(Digest.of(b""))
        if signed.key_id == requested.get("client"):
            return
    raise SignatureError(
        "this request is private: read it with its requester's signed request or its "
        f"capability ({CAPABILITY_HEADER}), or have the requester make it public",
        check=Check.ACCESS,
        id=request_id[:200],
    )


def payment_from_headers(headers: Mapping[str, str]) -> Envelope | None:
    """The signed payment in ``X-Veriml-Payment`` (not yet checked), or None. A header that
    is not base64 of a DSSE envelope is a :class:`SignatureError` (403)."""
    text = headers.get(PAYMENT_HEADER.lower()) or headers.get(PAYMENT_HEADER)
    if text is None:
        return None
    if len(text) > _MAX_HEADER:
        raise SignatureError("the payment header is too long", check=Check.PAYMENT)
    try:
        return Envelope.from_bytes(_b64(text, PAYMENT_HEADER))
    except FormatError as exc:
        raise SignatureError(
            "the payment is not a DSSE envelope", check=Check.PAYMENT, reason=exc.message
        ) from exc


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not base64", check=Check.REQUEST_SIGNATURE) from exc
