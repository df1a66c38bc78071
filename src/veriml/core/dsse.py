"""DSSE envelopes (Dead Simple Signing Envelope) carrying in-toto Statement v1.

- DSSE v1: https://github.com/secure-systems-lab/dsse/blob/master/protocol.md
  ``PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, with LEN in ASCII
  decimal; signatures are over the PAE, never over the raw payload.
- Envelope JSON: https://github.com/secure-systems-lab/dsse/blob/master/envelope.md
- in-toto Statement v1: https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.errors import Check, FormatError, SignatureError, VerificationError
from veriml.core.keys import SigningKey, VerifyingKey

__all__ = [
    "INTOTO_PAYLOAD_TYPE",
    "STATEMENT_TYPE",
    "Envelope",
    "Signature",
    "Statement",
    "Subject",
    "pae",
]

INTOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        # DSSE allows both standard and URL-safe base64, padded or not.
        padded = text + "=" * (-len(text) % 4)
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not valid base64", reason=str(exc)) from exc


@dataclass(frozen=True, slots=True)
class Signature:
    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope. Build with :meth:`sign`; check with :meth:`verify`."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = field(default=())

    @classmethod
    def sign(
        cls, payload: bytes, keys: Iterable[SigningKey], *, payload_type: str = INTOTO_PAYLOAD_TYPE
    ) -> Envelope:
        message = pae(payload_type, payload)
        sigs = tuple(Signature(key.key_id, key.sign(message)) for key in keys)
        if not sigs:
            raise FormatError("an envelope needs at least one signing key")
        return cls(payload_type, payload, sigs)

    def verify(self, trusted: Iterable[VerifyingKey], *, threshold: int = 1) -> list[VerifyingKey]:
        """Check that at least ``threshold`` distinct trusted keys signed; return those keys.

        Signatures by unknown key ids are ignored; a bad signature by a trusted key is an
        error in its own right (it means tampering, not a stranger's signature).
        """
        message = pae(self.payload_type, self.payload)
        by_id = {key.key_id: key for key in trusted}
        good: dict[str, VerifyingKey] = {}
        for signature in self.signatures:
            key = by_id.get(signature.keyid)
            if key is None:
                continue
            try:
                key.verify(signature.sig, message)
            except SignatureError as exc:
                raise SignatureError(
                    "DSSE signature does not verify", check=Check.SIGNATURE, keyid=signature.keyid
                ) from exc
            good[key.key_id] = key
        if len(good) < threshold:
            raise SignatureError(
                "envelope is not signed by enough trusted keys",
                check=Check.SIGNATURE,
                needed=threshold,
                found=len(good),
                signed_by=",".join(s.keyid for s in self.signatures) or "nobody",
            )
        return list(good.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode()} for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Envelope:
        if not isinstance(obj, Mapping):
            raise FormatError("a DSSE envelope is a JSON object")
        payload_type = obj.get("payloadType")
        if not isinstance(payload_type, str):
            raise FormatError("DSSE envelope needs a string payloadType")
        try:
            payload_type.encode()
        except UnicodeEncodeError as exc:
            # JSON can escape a lone surrogate, which has no UTF-8 form and so no PAE.
            raise FormatError("DSSE payloadType is not valid Unicode", reason=str(exc)) from exc
        payload = _b64decode(obj.get("payload"), "DSSE payload")
        raw_sigs = obj.get("signatures")
        if not isinstance(raw_sigs, list) or not raw_sigs:
            raise FormatError("DSSE envelope needs a non-empty signatures list")
        sigs: list[Signature] = []
        for item in raw_sigs:
            if not isinstance(item, Mapping):
                raise FormatError("each DSSE signature is an object")
            keyid = item.get("keyid", "")
            if not isinstance(keyid, str):
                raise FormatError("DSSE keyid must be a string")
            sigs.append(Signature(keyid, _b64decode(item.get("sig"), "DSSE sig")))
        return cls(payload_type, payload, tuple(sigs))

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        if len(data) > MAX_ENVELOPE_BYTES:
            raise FormatError("DSSE envelope is too large", size=len(data))
        return cls.from_json(parse_json_object(data, what="DSSE envelope"))


@dataclass(frozen=True, slots=True)
class Subject:
    name: str
    digest: Digest

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.digest.hex}}


@dataclass(frozen=True, slots=True)
class Statement:
    """An in-toto Statement v1; serialised as RFC 8785 JSON so its bytes are canonical."""

    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.to_json() for s in self.subjects],
            "predicateType": self.predicate_type,
            "predicate": dict(self.predicate),
        }

    def to_bytes(self) -> bytes:
        return canonicalize(self.to_json())

    @classmethod
    def from_bytes(cls, data: bytes) -> Statement:
        obj = parse_json_object(data, what="in-toto statement")
        if obj.get("_type") != STATEMENT_TYPE:
            raise VerificationError(
                "payload is not an in-toto Statement v1",
                check=Check.STATEMENT_TYPE,
                expected=STATEMENT_TYPE,
                got=obj.get("_type"),
            )
        subjects_raw = obj.get("subject")
        if not isinstance(subjects_raw, list):
            raise FormatError("in-toto statement needs a subject list")
        subjects: list[Subject] = []
        for item in subjects_raw:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise FormatError("each subject needs a name and a digest")
            digests = item.get("digest")
            if not isinstance(digests, dict) or not isinstance(digests.get("sha256"), str):
                raise FormatError("each subject needs a sha256 digest", subject=item.get("name"))
            subjects.append(Subject(item["name"], Digest.from_hex(digests["sha256"])))
        predicate_type = obj.get("predicateType")
        predicate = obj.get("predicate", {})
        if not isinstance(predicate_type, str) or not isinstance(predicate, dict):
            raise FormatError("in-toto statement needs a predicateType and an object predicate")
        return cls(tuple(subjects), predicate_type, predicate)
