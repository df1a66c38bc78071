"""Prefill checks: a node's signed verdict on another node's completion, an in-toto Statement
in a DSSE envelope (docs/llm.md, "Prefill check").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from veriml.core.digest import Digest
from veriml.core.dsse import INTOTO_PAYLOAD_TYPE, Envelope, Statement, Subject
from veriml.core.errors import (
    Check,
    FormatError,
    KeyFileError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.protocol.messages import object_member, text_member

__all__ = [
    "PREFILL_CHECK_PREDICATE_TYPE",
    "PrefillCheck",
    "open_prefill_check",
    "sign_prefill_check",
]

PREFILL_CHECK_PREDICATE_TYPE: Final = "https://veriml.dev/prefill-check/v1"


@dataclass(frozen=True, slots=True, kw_only=True)
class PrefillCheck:
    """A node's signed verdict on another node's completion (docs/llm.md, "Prefill check").

    An in-toto Statement whose one subject ``receipt`` is the SHA-256 of the checked receipt's
    DSSE payload, so the verdict cannot be moved to another completion; the predicate holds the
    :class:`~veriml.verify.prefill.PrefillReport` (as JSON) and what produced it (model,
    runtime fingerprint, checking node, request, timestamps).
    """

    receipt: Digest
    report: Mapping[str, Any]
    model: Digest
    runtime: Mapping[str, Any]
    node_id: str
    request_id: str
    started: str
    finished: str

    @property
    def accepted(self) -> bool:
        """True only when the report says so in so many words (``"accepted": true``)."""
        return self.report.get("accepted") is True

    def to_statement(self) -> Statement:
        return Statement(
            subjects=(Subject("receipt", self.receipt),),
            predicate_type=PREFILL_CHECK_PREDICATE_TYPE,
            predicate={
                "report": dict(self.report),
                "model": {"digest": self.model.to_text()},
                "runtime": dict(self.runtime),
                "node": {"id": self.node_id},
                "request": {"id": self.request_id},
                "timestamps": {"started": self.started, "finished": self.finished},
            },
        )


def sign_prefill_check(check: PrefillCheck, key: SigningKey) -> Envelope:
    """DSSE-sign the prefill-check statement with the checking node's key."""
    if key.key_id != check.node_id:
        raise KeyFileError("a prefill check is signed by the checking node", node=check.node_id)
    return Envelope.sign(check.to_statement().to_bytes(), [key])


def open_prefill_check(envelope: Envelope, key: VerifyingKey) -> PrefillCheck:
    """Check a prefill-check statement signed by ``key`` (the checking node's registered key).

    Raises :class:`VerificationError` (``check="prefill-check"``) on the wrong payload or
    predicate type, a malformed predicate or a node id that is not the key's, and
    :class:`SignatureError` when ``key`` did not sign it. The caller still compares
    ``receipt`` with the receipt it asked about and requires ``accepted``.
    """
    # 1. Payload type, 2. signature, 3. statement and predicate type, 4. members.
    if envelope.payload_type != INTOTO_PAYLOAD_TYPE:
        raise VerificationError(
            "prefill check is not an in-toto statement",
            check=Check.PREFILL_CHECK,
            expected=INTOTO_PAYLOAD_TYPE,
            got=envelope.payload_type,
        )
    envelope.verify([key])
    statement = Statement.from_bytes(envelope.payload)
    if statement.predicate_type != PREFILL_CHECK_PREDICATE_TYPE:
        raise VerificationError(
            "statement is not a prefill check",
            check=Check.PREFILL_CHECK,
            expected=PREFILL_CHECK_PREDICATE_TYPE,
            got=statement.predicate_type,
        )
    try:
        if len(statement.subjects) != 1 or statement.subjects[0].name != "receipt":
            raise FormatError("a prefill check has one subject named 'receipt'")
        predicate = statement.predicate
        report = object_member(predicate, "report")
        if not isinstance(report.get("accepted"), bool):
            raise FormatError("prefill report needs a boolean 'accepted'", member="report")
        times = object_member(predicate, "timestamps")
        check = PrefillCheck(
            receipt=statement.subjects[0].digest,
            report=report,
            model=Digest.from_text(text_member(object_member(predicate, "model"), "digest")),
            runtime=object_member(predicate, "runtime"),
            node_id=text_member(object_member(predicate, "node"), "id"),
            request_id=text_member(object_member(predicate, "request"), "id", max_len=256),
            started=text_member(times, "started"),
            finished=text_member(times, "finished"),
        )
    except FormatError as exc:
        raise VerificationError(
            "prefill check is malformed", check=Check.PREFILL_CHECK, reason=exc.message
        ) from exc
    if check.node_id != key.key_id:
        raise VerificationError(
            "prefill check names another node than its signer",
            check=Check.PREFILL_CHECK,
            expected=key.key_id,
            got=check.node_id,
        )
    return check
