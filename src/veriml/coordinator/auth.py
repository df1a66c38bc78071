"""Optional request signatures (docs/network.md, "Coordinator HTTP API").

A client or publisher may sign a request with its Ed25519 or EC key::

    X-Veriml-Key:        base64(PEM public key)
    X-Veriml-Signature:  <key id>:base64(signature)

over the DSSE v1 pre-authentication encoding
``PAE("application/vnd.veriml.request", METHOD SP PATH SP sha256:<hex of body>)``, where
PATH is the request's URL path (without the query). The coordinator verifies it and records
the key id (for example with a published model). A header that is present but does not
verify is refused (403): it is never ignored. Bodies are hashed while they stream, so a
multi-gigabyte upload is signed without being held in memory.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, pae
from veriml.core.errors import FormatError, KeyFileError, SignatureError
from veriml.core.keys import SigningKey, VerifyingKey

__all__ = [
    "KEY_HEADER",
    "PAYMENT_HEADER",
    "REQUEST_PAYLOAD_TYPE",
    "SIGNATURE_HEADER",
    "RequestSignature",
    "payment_from_headers",
    "request_message",
    "sign_request",
]

REQUEST_PAYLOAD_TYPE = "application/vnd.veriml.request"
KEY_HEADER = "X-Veriml-Key"
SIGNATURE_HEADER = "X-Veriml-Signature"
PAYMENT_HEADER = "X-Veriml-Payment"
"""base64 of a DSSE envelope: the payer's signed ``payment`` ledger request for this request's
fees (docs/ledger.md, "Authority"); required when the rules charge ``fee_per_job``."""
_MAX_HEADER = 16 * 1024


def request_message(method: str, path: str, body_digest: Digest) -> bytes:
    """The bytes a request signature covers: the PAE of ``METHOD PATH sha256:<hex>``."""
    line = f"{method.upper()} {path} {body_digest.to_text()}".encode()
    return pae(REQUEST_PAYLOAD_TYPE, line)


def sign_request(key: SigningKey, method: str, path: str, body: bytes) -> dict[str, str]:
    """The headers that sign a request whose body is ``body`` (for clients and tests)."""
    signature = key.sign(request_message(method, path, Digest.of(body)))
    return {
        KEY_HEADER: base64.b64encode(key.public.to_pem()).decode(),
        SIGNATURE_HEADER: f"{key.key_id}:{base64.b64encode(signature).decode()}",
    }


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


@dataclass(frozen=True, slots=True)
class RequestSignature:
    """A parsed request signature; :meth:`verify` checks it against the body's digest."""

    key: VerifyingKey
    signature: bytes

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> RequestSignature | None:
        """The signature in ``headers``, or None if the request is unsigned.

        Half a signature (a key without a signature or the reverse), a malformed header or
        a key id that is not the given key's is :class:`SignatureError`.
        """
        key_text = headers.get(KEY_HEADER.lower()) or headers.get(KEY_HEADER)
        sig_text = headers.get(SIGNATURE_HEADER.lower()) or headers.get(SIGNATURE_HEADER)
        if key_text is None and sig_text is None:
            return None
        if not key_text or not sig_text:
            raise SignatureError(
                f"a signed request needs both {KEY_HEADER} and {SIGNATURE_HEADER}",
                check="request-signature",
            )
        if len(key_text) > _MAX_HEADER or len(sig_text) > _MAX_HEADER:
            raise SignatureError(
                "request signature headers are too long", check="request-signature"
            )
        try:
            key = VerifyingKey.from_pem(_b64(key_text, KEY_HEADER))
        except KeyFileError as exc:
            raise SignatureError(
                f"{KEY_HEADER} is not a PEM public key", check="request-signature"
            ) from exc
        key_id, sep, encoded = sig_text.rpartition(":")
        if not sep or key_id != key.key_id:
            raise SignatureError(
                "request signature names another key",
                check="request-signature",
                expected=key.key_id,
                got=key_id[:80],
            )
        return cls(key, _b64(encoded, SIGNATURE_HEADER))

    def verify(self, method: str, path: str, body_digest: Digest) -> str:
        """Raise :class:`SignatureError` unless the signature covers this request; the key id."""
        try:
            self.key.verify(self.signature, request_message(method, path, body_digest))
        except SignatureError as exc:
            raise SignatureError(
                "request signature does not verify",
                check="request-signature",
                keyid=self.key_id,
                method=method,
                path=path,
            ) from exc
        return self.key_id
