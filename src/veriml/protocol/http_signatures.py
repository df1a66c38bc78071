"""Signed HTTP requests: RFC 9421 HTTP Message Signatures over an RFC 9530 Content-Digest.

https://www.rfc-editor.org/rfc/rfc9421 ; https://www.rfc-editor.org/rfc/rfc9530 . The signature
base is built and checked by the ``http-message-signatures`` package; this module fixes
veriml's profile of it (docs/network.md, "Signed requests"):

- the key travels in ``X-Veriml-Key`` (base64 of its PEM public key) and ``keyid`` is veriml's
  key id of that key (a digest of it), so a signature is self-certifying: whoever holds the key
  signed, and the coordinator records that key id (a client, a publisher, a disputing party);
- ``alg``: ``ed25519``, ``ecdsa-p256-sha256`` or ``ecdsa-p384-sha384``, by the key;
- covered components: ``@method``, ``@target-uri``, ``@authority``, ``content-digest``, and
  every one of :data:`BOUND_HEADERS` the request carries (``idempotency-key`` above all: a
  captured request cannot be sent again under another key);
- parameters: ``created``, ``expires`` (at most :data:`MAX_WINDOW` later), a random ``nonce``,
  ``keyid``, ``alg`` and ``tag="veriml"`` (so no signature made for another protocol with the
  same key is accepted here);
- ``Content-Digest: sha-256=:<base64>:`` of the body as sent.

What a server must do beyond :func:`verify_request` is stated there: compare the body's digest
with :attr:`SignedRequest.content_digest`, and remember the nonce until the signature expires.
Pure: no clock but the one given, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import http_message_signatures as hms
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from http_message_signatures import algorithms

from veriml.core.digest import Digest
from veriml.core.errors import Check, KeyFileError, SignatureError
from veriml.core.keys import SigningKey, VerifyingKey

__all__ = [
    "BOUND_HEADERS",
    "KEY_HEADER",
    "LABEL",
    "MAX_SKEW",
    "MAX_WINDOW",
    "TAG",
    "SignedRequest",
    "content_digest_header",
    "sign_request",
    "verify_request",
]

KEY_HEADER: Final = "X-Veriml-Key"
LABEL: Final = "veriml"
TAG: Final = "veriml"
MAX_WINDOW: Final = 300
"""The longest a signature may be valid (``expires - created``), seconds: the window a server
must remember its nonce for."""
DEFAULT_WINDOW: Final = 120
MAX_SKEW: Final = dt.timedelta(seconds=30)
"""Clock difference tolerated between the signer and the server."""
BOUND_HEADERS: Final = (
    "idempotency-key",
    "x-veriml-publisher-key",
    "x-veriml-payment",
    "x-veriml-epoch",
)
"""Request headers with meaning to the coordinator: each one present must be covered."""
_BASE: Final = ("@method", "@target-uri", "@authority", "content-digest")
_MAX_FIELD = 16 * 1024
_MAX_NONCE = 128


def _algorithm(key: Any) -> type[hms.HTTPSignatureAlgorithm]:
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return algorithms.ED25519
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if key.curve.name == "secp384r1":
            return algorithms.ECDSA_P384_SHA384
        return algorithms.ECDSA_P256_SHA256
    raise SignatureError("a request must be signed with an Ed25519 or EC key")


def content_digest_header(digest: Digest) -> str:
    """``Content-Digest`` (RFC 9530 §2) of a body whose SHA-256 is ``digest``."""
    return f"sha-256=:{base64.b64encode(digest.raw).decode()}:"


class _Headers:
    """Header field lines for the library: ``items()`` keeps repeats and wire order."""

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields = list(fields)

    def items(self) -> Iterable[tuple[str, str]]:
        return self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self._fields))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(n.lower() == name.lower() for n, _ in self._fields)

    def __setitem__(self, name: str, value: str) -> None:
        self._fields = [(n, v) for n, v in self._fields if n.lower() != name.lower()]
        self._fields.append((name, value))

    def __delitem__(self, name: str) -> None:
        self._fields = [(n, v) for n, v in self._fields if n.lower() != name.lower()]

    def get(self, name: str) -> str | None:
        values = [v for n, v in self._fields if n.lower() == name.lower()]
        return ", ".join(values) if values else None


@dataclass
class _Message:
    method: str
    url: str
    headers: _Headers


class _Resolver(hms.HTTPSignatureKeyResolver):
    def __init__(self, key_id: str, key: Any) -> None:
        self._key_id, self._key = key_id, key

    def resolve_public_key(self, key_id: str) -> Any:
        if key_id != self._key_id:
            raise SignatureError(
                "request signature names another key", check=Check.REQUEST_SIGNATURE
            )
        return self._key

    def resolve_private_key(self, key_id: str) -> Any:
        return self.resolve_public_key(key_id)


def sign_request(
    key: SigningKey,
    method: str,
    url: str,
    body_digest: Digest,
    headers: Mapping[str, str] | None = None,
    *,
    now: dt.datetime | None = None,
    window: int = DEFAULT_WINDOW,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers that sign a request to ``url`` whose body has SHA-256 ``body_digest``:
    ``X-Veriml-Key``, ``Content-Digest``, ``Signature-Input`` and ``Signature``. ``headers``
    are the other headers the request will carry; each of :data:`BOUND_HEADERS` among them is
    covered, so they must be sent exactly as given."""
    if not 0 < window <= MAX_WINDOW:
        raise SignatureError("a signature's window must be 1-300 seconds", window=window)
    created = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    fields = _Headers((k, v) for k, v in (headers or {}).items())
    fields["Content-Digest"] = content_digest_header(body_digest)
    covered = list(_BASE) + [h for h in BOUND_HEADERS if h in fields]
    signer = hms.HTTPMessageSigner(
        signature_algorithm=_algorithm(key.key), key_resolver=_Resolver(key.key_id, key.key)
    )
    message = _Message(method.upper(), url, fields)
    signer.sign(
        message,
        key_id=key.key_id,
        created=created,
        expires=created + dt.timedelta(seconds=window),
        nonce=nonce or secrets.token_urlsafe(18),
        label=LABEL,
        tag=TAG,
        covered_component_ids=covered,
        use_existing_digest=True,
    )
    out = {KEY_HEADER: base64.b64encode(key.public.to_pem()).decode()}
    for name in ("Content-Digest", "Signature-Input", "Signature"):
        value = fields.get(name)
        assert value is not None
        out[name] = value
    return out


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """A request whose RFC 9421 signature verified: who signed it, and what the server must
    still hold it to (the body's digest; the nonce, single-use until ``expires``)."""

    key: VerifyingKey
    nonce: str
    created: int
    expires: int
    content_digest: Digest

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def check_body(self, body_digest: Digest) -> str:
        """Raise :class:`SignatureError` unless the body is the one signed; the key id."""
        if body_digest != self.content_digest:
            raise SignatureError(
                "the body is not the one the request signature covers (Content-Digest)",
                check=Check.REQUEST_SIGNATURE,
                keyid=self.key_id,
            )
        return self.key_id


def verify_request(
    method: str,
    url: str,
    fields: Iterable[tuple[str, str]],
    *,
    now: dt.datetime | None = None,
) -> SignedRequest | None:
    """The verified signature of a request (its ``method``, full ``url`` and header field
    lines), or None when it carries none. A signature that is present but malformed, expired,
    not yet valid, valid for longer than :data:`MAX_WINDOW`, by another key than
    ``X-Veriml-Key``, not covering every required component, or not verifying is a
    :class:`SignatureError` (403, ``check: "request-signature"``): never ignored.

    The caller must still compare the body's digest (:meth:`SignedRequest.check_body`) and
    refuse a nonce it has seen before ``expires``.
    """
    headers = _Headers(fields)
    key_text = headers.get(KEY_HEADER)
    if key_text is None and "signature" not in headers and "signature-input" not in headers:
        return None

    def refuse(message: str, **evidence: Any) -> SignatureError:
        return SignatureError(message, check=Check.REQUEST_SIGNATURE, **evidence)

    if not key_text or "signature" not in headers or "signature-input" not in headers:
        raise refuse(f"a signed request needs {KEY_HEADER}, Signature-Input and Signature")
    for name in (KEY_HEADER, "signature", "signature-input", "content-digest"):
        if len(headers.get(name) or "") > _MAX_FIELD:
            raise refuse(f"the {name} header is too long")
    try:
        key = VerifyingKey.from_pem(base64.b64decode(key_text, validate=True))
    except (binascii.Error, ValueError, KeyFileError) as exc:
        raise refuse(f"{KEY_HEADER} is not base64 of a PEM public key") from exc
    covered = list(_BASE) + [h for h in BOUND_HEADERS if h in headers]
    verifier = hms.HTTPMessageVerifier(
        signature_algorithm=_algorithm(key.key), key_resolver=_Resolver(key.key_id, key.key)
    )
    verifier.max_clock_skew = MAX_SKEW
    message = _Message(method.upper(), url, headers)
    try:
        (result,) = verifier.verify(
            message,
            max_age=dt.timedelta(seconds=MAX_WINDOW),
            expect_tag=TAG,
            require_components=covered,
        )
    except SignatureError:
        raise
    except (hms.HTTPMessageSignaturesException, ValueError) as exc:
        raise refuse("request signature does not verify", reason=str(exc)[:200]) from exc
    params = result.parameters
    created, expires, nonce = params.get("created"), params.get("expires"), params.get("nonce")
    if not isinstance(created, int) or not isinstance(expires, int):
        raise refuse("a request signature needs created and expires")
    if not 0 < expires - created <= MAX_WINDOW:
        raise refuse(
            f"a request signature may be valid for at most {MAX_WINDOW} seconds",
            created=created,
            expires=expires,
        )
    moment = (now or dt.datetime.now(dt.UTC)).timestamp()
    if created > moment + MAX_SKEW.total_seconds() or expires < moment - MAX_SKEW.total_seconds():
        raise refuse("the request signature is not valid now", created=created, expires=expires)
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= _MAX_NONCE:
        raise refuse("a request signature needs a nonce of 16-128 characters")
    return SignedRequest(key, nonce, created, expires, _content_digest(headers, refuse))


def _content_digest(headers: _Headers, refuse: Any) -> Digest:
    value = headers.get("content-digest") or ""
    for member in value.split(","):
        name, sep, encoded = member.strip().partition("=")
        if sep and name.strip().lower() == "sha-256":
            encoded = encoded.strip()
            if len(encoded) >= 2 and encoded[0] == encoded[-1] == ":":
                try:
                    raw = base64.b64decode(encoded[1:-1], validate=True)
                except (binascii.Error, ValueError):
                    break
                if len(raw) == 32:
                    return Digest(raw)
            break
    raise refuse("Content-Digest must give the body's sha-256 (RFC 9530)")
