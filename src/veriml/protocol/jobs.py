"""Jobs: the unit of work the coordinator signs for one node, RFC 8785 JSON in a DSSE envelope
(docs/network.md; the LLM job kinds: docs/llm.md). A job is opened like every message of
:mod:`veriml.protocol.messages` (payload type, signature, members), then by its own rules.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    FormatError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import parse_time
from veriml.protocol.messages import object_member, open_message, sign_message, text_member

__all__ = ["JOB_KINDS", "JOB_TYPE", "Job"]

JOB_TYPE = "application/vnd.veriml.job+json"
JOB_KINDS: Final[tuple[str, ...]] = ("onnx", "completion", "embedding", "prefill")
"""What a job asks for: an ONNX run (the default), or an LLM completion, embedding or prefill
check of a completion (docs/llm.md)."""
# Which canonical request types each LLM job kind carries (docs/llm.md, "Canonical request").
_REQUEST_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "completion": frozenset({"chat.completion", "text_completion"}),
    "embedding": frozenset({"embedding"}),
    "prefill": frozenset({"chat.completion", "text_completion"}),
}


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work the coordinator signs for one node. Inputs travel beside it, by digest.

    ONNX jobs name their input tensors by digest. LLM jobs (``kind`` ``completion``,
    ``embedding`` or ``prefill``) carry no tensors: their canonical request (docs/llm.md)
    travels beside the envelope and the signed payload holds its RFC 8785 digest,
    ``request_digest``. Building a job with ``request`` fills that digest, and a job built with
    both checks they agree (``check="job-request"``), so an opened job's request is always
    the one the coordinator signed.
    """

    job_id: str
    node_id: str
    request_id: str
    model: Digest
    inputs: Mapping[str, Digest]
    policy: str
    issued_at: str
    expires_at: str
    trace: bool = False
    spot: Digest | None = None
    """``spot:P`` jobs: the coordinator's commitment to its secret; the receipt repeats it."""
    kind: str = "onnx"
    """One of ``JOB_KINDS``; omitted from the signed payload when ``"onnx"``, so ONNX job
    bytes are what they were before LLM jobs existed."""
    request: Mapping[str, Any] | None = field(default=None, compare=False)
    """LLM jobs: the canonical request (not signed itself: its digest is)."""
    request_digest: Digest | None = None
    """LLM jobs: SHA-256 of the RFC 8785 form of ``request``."""
    retain_until: str | None = None
    """Traced jobs: keep the trace at least until this RFC 3339 time (the answer's challenge
    window, docs/node.md "Traces"); omitted from the signed payload when None, so job bytes
    without it are what they were before it existed."""

    def __post_init__(self) -> None:
        if self.kind not in JOB_KINDS:
            raise FormatError("unknown job kind", got=self.kind, expected="|".join(JOB_KINDS))
        if self.retain_until is not None:
            if not self.trace:
                raise FormatError("only a traced job keeps a trace until a time", member="trace")
            parse_time(self.retain_until, what="retain_until")
        if self.kind == "onnx":
            if self.request is not None or self.request_digest is not None:
                raise FormatError("an ONNX job carries tensors, not a request", member="request")
            return
        if self.inputs:
            raise FormatError(f"a {self.kind} job carries no input tensors", member="inputs")
        if self.request is None:
            if self.request_digest is None:
                raise FormatError(f"a {self.kind} job needs a request digest", member="request")
            return
        calculated = canonical_digest(dict(self.request))
        if self.request_digest is None:
            object.__setattr__(self, "request_digest", calculated)
        elif calculated != self.request_digest:
            raise VerificationError(
                "job request does not match its signed digest",
                check=Check.JOB_REQUEST,
                expected=self.request_digest,
                calculated=calculated,
            )
        _check_request(self.kind, self.request, self.model)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "job",
            "job_id": self.job_id,
            "node_id": self.node_id,
            "request_id": self.request_id,
            "model": self.model.to_text(),
            "inputs": {name: d.to_text() for name, d in sorted(self.inputs.items())},
            "policy": self.policy,
            "trace": self.trace,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }
        if self.spot is not None:
            out["spot"] = self.spot.to_text()
        if self.kind != "onnx":
            out["kind"] = self.kind
        if self.request_digest is not None:
            out["request_digest"] = self.request_digest.to_text()
        if self.retain_until is not None:
            out["retain_until"] = self.retain_until
        return out

    def sign(self, coordinator_key: SigningKey) -> Envelope:
        return sign_message(JOB_TYPE, self.to_json(), coordinator_key)

    @classmethod
    def open(
        cls,
        envelope: Envelope,
        coordinator_key: VerifyingKey,
        *,
        node_id: str,
        now: dt.datetime | None = None,
        skew: dt.timedelta = dt.timedelta(seconds=5),
        request: Mapping[str, Any] | None = None,
    ) -> Job:
        """Check a job for this node: signature, addressee, validity window and, for LLM
        jobs, that ``request`` (from the body) is the canonical request the job signed.

        Replays (a ``job_id`` seen before) are the node's to refuse: it keeps the ids.
        """
        try:
            message = open_message(envelope, JOB_TYPE, coordinator_key, message_type="job")
        except SignatureError as exc:
            raise SignatureError(
                "job is not signed by this node's coordinator", check=Check.JOB_SIGNATURE
            ) from exc
        inputs = object_member(message, "inputs")
        trace = message.get("trace", False)
        if not isinstance(trace, bool):
            raise FormatError("job member 'trace' must be a boolean")
        kind = message.get("kind", "onnx")
        signed = message.get("request_digest")
        if kind != "onnx" and (request is None or signed is None):
            # The request travels unsigned: only a signed digest binds it to the job.
            raise FormatError(
                f"a {kind} job needs its request and the request's signed digest",
                member="request" if request is None else "request_digest",
            )
        if kind == "onnx" and request is not None:
            raise FormatError("an ONNX job body carries no request", member="request")
        job = cls(
            job_id=text_member(message, "job_id", max_len=128),
            node_id=text_member(message, "node_id"),
            request_id=text_member(message, "request_id", max_len=256),
            model=Digest.from_text(text_member(message, "model")),
            inputs={str(k): Digest.from_text(str(v)) for k, v in inputs.items()},
            policy=text_member(message, "policy", max_len=256),
            issued_at=text_member(message, "issued_at"),
            expires_at=text_member(message, "expires_at"),
            trace=trace,
            spot=None
            if message.get("spot") is None
            else Digest.from_text(text_member(message, "spot")),
            kind=kind if isinstance(kind, str) else repr(kind)[:40],
            request_digest=None
            if signed is None
            else Digest.from_text(text_member(message, "request_digest")),
            retain_until=None
            if message.get("retain_until") is None
            else text_member(message, "retain_until", max_len=64),
        )
        if job.node_id != node_id:
            raise VerificationError(
                "job is addressed to another node",
                check=Check.JOB_NODE,
                expected=node_id,
                got=job.node_id,
            )
        current = now or dt.datetime.now(dt.UTC)
        if parse_time(job.issued_at, what="issued_at") > current + skew:
            raise VerificationError(
                "job is issued in the future", check=Check.JOB_TIME, issued_at=job.issued_at
            )
        if parse_time(job.expires_at, what="expires_at") <= current:
            raise VerificationError(
                "job has expired", check=Check.JOB_EXPIRED, expires_at=job.expires_at
            )
        # Last, once the job is known to be ours and current: the request is the signed one.
        return job if request is None else dataclasses.replace(job, request=request)

    def check_inputs(self, digests: Mapping[str, Digest]) -> None:
        """Raise unless the tensors that came with the job are the ones it signed."""
        if dict(digests) != dict(self.inputs):
            raise VerificationError(
                "job inputs do not match their signed digests",
                check=Check.JOB_INPUTS,
                expected=sorted(self.inputs),
                got=sorted(digests),
            )


def _check_request(kind: str, request: Mapping[str, Any], model: Digest) -> None:
    """An LLM job's request is of a type its kind runs, for the model the job names."""
    wanted = _REQUEST_TYPES[kind]
    if request.get("type") not in wanted:
        raise FormatError(
            f"a {kind} job's request has the wrong type",
            member="request",
            expected="|".join(sorted(wanted)),
            got=str(request.get("type"))[:40],
        )
    if request.get("model") != model.to_text():
        raise VerificationError(
            "job request names another model",
            check=Check.JOB_REQUEST,
            expected=model,
            got=str(request.get("model"))[:80],
        )
