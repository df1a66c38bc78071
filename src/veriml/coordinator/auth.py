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
from collections.abc import Mapping

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Conflict, FormatError, LimitExceeded, SignatureError
from veriml.core.keys import SigningKey
from veriml.protocol.http_signatures import (
    KEY_HEADER,
    SignedRequest,
    verify_request,
)
from veriml.protocol.http_signatures import sign_request as sign_http_request

__all__ = [
    "KEY_HEADER",
    "PAYMENT_HEADER",
    "SignedRequest",
    "accept_signature",
    "payment_from_headers",
    "read_signed_body",
    "request_signature",
    "sign_request",
]

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
    nonces = getattr(request.app.state, "nonces", None)
    if nonces is None:
        raise SignatureError("this coordinator cannot check signed requests yet (starting)")
    token = "req:" + hashlib.sha256(f"{key_id}\n{signed.nonce}".encode()).hexdigest()
    try:
        await run_in_threadpool(nonces.use, token)
    except Conflict as exc:
        if not covered_key:
            raise SignatureError(
                "this signed request was sent before (its nonce is used): sign it again",
                check="request-replay",
                keyid=key_id,
            ) from exc
    return key_id


async def read_signed_body(
    request: Request, limit: int, *, idempotent: bool = False
) -> tuple[bytes, str | None]:
    """A JSON route's body (at most ``limit`` bytes, 413 beyond) and its signer's key id (None
    when unsigned): the signature is checked before the body is read, the digest and the nonce
    after."""
    signed = request_signature(request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LimitExceeded("request body is too large", size=int(declared), limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LimitExceeded("request body is too large", limit=limit)
        chunks.append(chunk)
    raw = b"".join(chunks)
    return raw, await accept_signature(request, signed, Digest.of(raw), idempotent=idempotent)


def payment_from_headers(headers: Mapping[str, str]) -> Envelope | None:
    """The signed payment in ``X-Veriml-Payment`` (not yet checked), or None. A header that
    is not base64 of a DSSE envelope is a :class:`SignatureError` (403)."""
    text = headers.get(PAYMENT_HEADER.lower()) or headers.get(PAYMENT_HEADER)
    if text is None:
        return None
    if len(text) > _MAX_HEADER:
        raise SignatureError("the payment header is too long", check="payment")
    try:
        return Envelope.from_bytes(_b64(text, PAYMENT_HEADER))
    except FormatError as exc:
        raise SignatureError(
            "the payment is not a DSSE envelope", check="payment", reason=exc.message
        ) from exc


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"{what} is not base64", check="request-signature") from exc
