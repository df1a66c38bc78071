"""Node descriptors, heartbeats, jobs and prefill checks: RFC 8785 JSON in DSSE envelopes
(docs/network.md; LLM jobs and prefill checks: docs/llm.md).

Every ``open`` checks, in order: (1) the envelope's payload type, (2) the signature by the
expected key, (3) the message ``type`` and members, (4) the freshness and binding rules of the
message. Failures raise :class:`SignatureError` or :class:`VerificationError` with ``check``
naming the step; malformed members raise :class:`FormatError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from veriml.core.canonical import canonical_digest, canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import INTOTO_PAYLOAD_TYPE, Envelope, Statement, Subject
from veriml.core.errors import (
    Check,
    FormatError,
    KeyFileError,
    LimitExceededError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import format_time, parse_time
from veriml.protocol.accounts import OperatorBinding

__all__ = [
    "HEARTBEAT_TYPE",
    "JOB_KINDS",
    "JOB_TYPE",
    "NODE_DESCRIPTOR_TYPE",
    "PREFILL_CHECK_PREDICATE_TYPE",
    "Heartbeat",
    "Job",
    "NodeDescriptor",
    "PrefillCheck",
    "format_time",
    "node_endpoint",
    "open_message",
    "open_prefill_check",
    "parse_time",
    "sign_message",
    "sign_prefill_check",
]

NODE_DESCRIPTOR_TYPE = "application/vnd.veriml.node-descriptor+json"
HEARTBEAT_TYPE = "application/vnd.veriml.heartbeat+json"
JOB_TYPE = "application/vnd.veriml.job+json"
MAX_MESSAGE_BYTES = 64 * 1024
DESCRIPTOR_MAX_AGE = dt.timedelta(minutes=5)
# A descriptor is logged for good: every member is bounded (docs/network.md, "Node
# descriptor"), and so is the whole payload, unknown members included.
MAX_DESCRIPTOR_BYTES = 16 * 1024
MAX_ENDPOINT_CHARS = 256
MAX_ENGINES = 8
MAX_MODELS = 64
MAX_FINGERPRINT_BYTES = 4096
_ENGINE = re.compile(r"[a-z0-9][a-z0-9._+-]{0,63}")
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def sign_message(payload_type: str, message: Mapping[str, Any], key: SigningKey) -> Envelope:
    """DSSE-sign the RFC 8785 form of ``message``."""
    return Envelope.sign(canonicalize(dict(message)), [key], payload_type=payload_type)


def open_message(
    envelope: Envelope, payload_type: str, key: VerifyingKey, *, message_type: str
) -> dict[str, Any]:
    """Check type and signature; return the message object."""
    # 1. The payload type says what the signer meant to sign.
    if envelope.payload_type != payload_type:
        raise VerificationError(
            "unexpected message type",
            check=Check.PAYLOAD_TYPE,
            expected=payload_type,
            got=envelope.payload_type,
        )
    if len(envelope.payload) > MAX_MESSAGE_BYTES:
        raise FormatError("message is too large", size=len(envelope.payload))
    # 2. The signature by the expected key.
    envelope.verify([key])
    # 3. The message parses and has the right type.
    message = parse_json_object(envelope.payload, what=message_type)
    if message.get("type") != message_type:
        raise VerificationError(
            "message has the wrong type",
            check=Check.MESSAGE_TYPE,
            expected=message_type,
            got=message.get("type"),
        )
    return message


def _str(message: Mapping[str, Any], key: str, *, max_len: int = 2048) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FormatError(f"message member {key!r} must be a non-empty string", member=key)
    return value


def _str_list(message: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = message.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"message member {key!r} must be a list of strings", member=key)
    return tuple(value)


def _obj(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = message.get(key, {})
    if not isinstance(value, dict):
        raise FormatError(f"message member {key!r} must be an object", member=key)
    return value


def node_endpoint(text: str) -> str:
    """A node's endpoint, normalised: a plain ``http``/``https`` origin (a host, an optional
    port) with no user, path, query or fragment, at most 256 characters. Scheme and host are
    lower-cased and a lone trailing ``/`` dropped: ``"HTTP://Node.Example:8701/"`` is
    ``"http://node.example:8701"``. The coordinator only ever appends its own paths to it
    (``/v1/jobs``, ``/v1/traces/...``), so a descriptor cannot aim it anywhere else on a host.

    >>> node_endpoint("http://[::1]:8701/")
    'http://[::1]:8701'
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_ENDPOINT_CHARS:
        raise FormatError("a node endpoint is 1-256 characters", member="endpoint")

    def refuse(why: str) -> FormatError:
        return FormatError(
            f"a node endpoint is a plain http(s) origin: {why}", member="endpoint", got=text[:80]
        )

    # urlsplit would read a user from "@", a query from "?" and a fragment from "#"; none has
    # a place in an origin, and neither has anything that is not printable ASCII.
    if not text.isascii() or not text.isprintable() or any(c in text for c in " \\?#@"):
        raise refuse("printable ASCII, with no user, query or fragment")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:  # a port out of range, brackets around something else
        raise refuse("a host, and a port of 1-65535") from exc
    scheme, host = parts.scheme.lower(), parts.hostname or ""
    if scheme not in ("http", "https") or not host:
        raise refuse("http or https, and a host")
    if parts.path not in ("", "/"):
        raise refuse("no path (the coordinator adds its own)")
    if port == 0:
        raise refuse("a port of 1-65535")
    if ":" in host:  # urlsplit took it from brackets: an IPv6 address, nothing else
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError as exc:
            raise refuse("an IPv6 host in brackets is an address") from exc
    elif len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise refuse("a DNS name or an IPv4 address as host")
    return f"{scheme}://{host}" if port is None else f"{scheme}://{host}:{port}"


def _bounded_obj(message: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An object member whose RFC 8785 form is at most :data:`MAX_FINGERPRINT_BYTES`."""
    value = _obj(message, key)
    if len(canonicalize(value)) > MAX_FINGERPRINT_BYTES:
        raise LimitExceededError(
            f"descriptor member {key!r} is too large", member=key, limit=MAX_FINGERPRINT_BYTES
        )
    return value


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """What a node says about itself when it registers; signed by the node's own key.

    ``operator`` is the operator's **account id** (a key id) and ``operator_binding`` that
    operator's signed :class:`~veriml.protocol.accounts.OperatorBinding` of this node: a node
    cannot name an operator that did not bind it, so "distinct operators" means distinct keys,
    each of which must hold stake (docs/network.md, "Operators").
    """

    public_key: str
    operator_binding: Envelope
    endpoint: str
    issued_at: str
    nonce: str
    engines: tuple[str, ...] = ("onnxruntime",)
    models: tuple[str, ...] = ("*",)
    hardware: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)
    operator: str = field(default="", compare=False)
    """The operator's account id, read from the binding (checked by :meth:`open`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "endpoint", node_endpoint(self.endpoint))
        engines, models = tuple(self.engines), tuple(self.models)
        if len(engines) > MAX_ENGINES or not all(
            isinstance(e, str) and _ENGINE.fullmatch(e) for e in engines
        ):
            raise FormatError(
                f"a descriptor lists at most {MAX_ENGINES} engines, each a short lower-case name",
                member="engines",
            )
        if len(models) > MAX_MODELS:
            raise FormatError(
                f"a descriptor lists at most {MAX_MODELS} models ('*': every model)",
                member="models",
            )
        object.__setattr__(self, "engines", engines)
        object.__setattr__(self, "models", descriptor_models(models))
        for name in ("hardware", "runtime"):
            _bounded_obj({name: dict(getattr(self, name))}, name)
        if not self.operator:
            payload = parse_json_object(self.operator_binding.payload, what="operator binding")
            object.__setattr__(self, "operator", _str(payload, "operator", max_len=128))

    @property
    def key(self) -> VerifyingKey:
        return VerifyingKey.from_pem(self.public_key.encode())

    @property
    def node_id(self) -> str:
        return self.key.key_id

    @property
    def binding(self) -> OperatorBinding:
        """The operator binding, checked: signed by the operator, for this node."""
        return OperatorBinding.open(self.operator_binding, node=self.node_id)

    def serves(self, model: Digest) -> bool:
        return "*" in self.models or model.to_text() in self.models

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "node-descriptor",
            "node_id": self.node_id,
            "public_key": self.public_key,
            "operator": self.operator,
            "operator_binding": self.operator_binding.to_json(),
            "endpoint": self.endpoint,
            "engines": list(self.engines),
            "models": list(self.models),
            "hardware": dict(self.hardware),
            "runtime": dict(self.runtime),
            "issued_at": self.issued_at,
            "nonce": self.nonce,
        }

    def sign(self, key: SigningKey) -> Envelope:
        if key.public.key_id != self.node_id:
            raise KeyFileError("a descriptor is signed by the node's own key", node=self.node_id)
        return sign_message(NODE_DESCRIPTOR_TYPE, self.to_json(), key)

    @classmethod
    def open(
        cls, envelope: Envelope, *, now: dt.datetime | None = None, max_age: dt.timedelta | None
    ) -> NodeDescriptor:
        """Check a descriptor against the key it carries, and its operator binding.
        ``max_age=None`` skips freshness (for re-checking an old descriptor from the log).

        Its size is checked first (:class:`LimitExceededError` past ``MAX_DESCRIPTOR_BYTES``), and
        every member's bound and the endpoint rule (:func:`node_endpoint`) when it is built
        (:class:`FormatError`), so nothing unbounded ever reaches the log."""
        if len(envelope.payload) > MAX_DESCRIPTOR_BYTES:
            raise LimitExceededError(
                "node descriptor is too large",
                size=len(envelope.payload),
                limit=MAX_DESCRIPTOR_BYTES,
            )
        if len(envelope.to_bytes()) > 2 * MAX_DESCRIPTOR_BYTES:  # signatures and key ids
            raise LimitExceededError(
                "node descriptor envelope is too large", limit=MAX_DESCRIPTOR_BYTES
            )
        try:
            unverified = parse_json_object(envelope.payload, what="node descriptor")
            pem = _str(unverified, "public_key", max_len=4096)
            if not pem.isascii():  # no PEM; a lone surrogate (JSON escapes one) cannot encode
                raise FormatError("public_key is not a PEM public key", member="public_key")
            key = VerifyingKey.from_pem(pem.encode())
        except (FormatError, KeyFileError) as exc:
            raise VerificationError(
                "node descriptor does not carry a usable key",
                check=Check.DESCRIPTOR,
                reason=exc.message,
            ) from exc
        if key.kind != "ed25519":
            raise VerificationError("node keys are Ed25519", check=Check.DESCRIPTOR, got=key.kind)
        message = open_message(envelope, NODE_DESCRIPTOR_TYPE, key, message_type="node-descriptor")
        try:
            binding = Envelope.from_json(_obj(message, "operator_binding"))
        except FormatError as exc:
            raise VerificationError(
                "node descriptor carries no operator binding",
                check=Check.OPERATOR_BINDING,
                reason=exc.message,
            ) from exc
        descriptor = cls(
            public_key=message["public_key"],
            operator_binding=binding,
            operator=_str(message, "operator", max_len=128),
            endpoint=_str(message, "endpoint", max_len=MAX_ENDPOINT_CHARS),
            issued_at=_str(message, "issued_at", max_len=64),
            nonce=_str(message, "nonce", max_len=128),
            engines=_str_list(message, "engines"),
            models=_str_list(message, "models"),
            hardware=_bounded_obj(message, "hardware"),
            runtime=_bounded_obj(message, "runtime"),
        )
        # 4. The node id is the signing key's id, the operator bound this node, and the
        # descriptor is fresh.
        if message.get("node_id") != descriptor.node_id:
            raise VerificationError(
                "node id is not the signing key's id",
                check=Check.DESCRIPTOR,
                claimed=message.get("node_id"),
                calculated=descriptor.node_id,
            )
        try:
            bound = OperatorBinding.open(binding, node=descriptor.node_id)
        except FormatError as exc:
            raise VerificationError(
                "the operator binding is malformed",
                check=Check.OPERATOR_BINDING,
                reason=exc.message,
            ) from exc
        if message.get("operator") != bound.operator:
            raise VerificationError(
                "the descriptor names another operator than the one that bound the node",
                check=Check.OPERATOR_BINDING,
                claimed=str(message.get("operator"))[:80],
                bound=bound.operator,
            )
        if max_age is not None:
            issued = parse_time(descriptor.issued_at, what="issued_at")
            current = now or dt.datetime.now(dt.UTC)
            if abs(current - issued) > max_age:
                raise VerificationError(
                    "node descriptor is stale or from the future",
                    check=Check.FRESHNESS,
                    issued_at=descriptor.issued_at,
                )
        return descriptor


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """A node's periodic liveness and load report, signed by its registered key."""

    node_id: str
    issued_at: str
    active: int = 0
    queued: int = 0
    capacity: int = 1
    cached: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "heartbeat",
            "node_id": self.node_id,
            "issued_at": self.issued_at,
            "load": {"active": self.active, "queued": self.queued, "capacity": self.capacity},
            "cached": list(self.cached),
        }

    def sign(self, key: SigningKey) -> Envelope:
        return sign_message(HEARTBEAT_TYPE, self.to_json(), key)

    @classmethod
    def open(cls, envelope: Envelope, key: VerifyingKey) -> Heartbeat:
        message = open_message(envelope, HEARTBEAT_TYPE, key, message_type="heartbeat")
        load = _obj(message, "load")
        counts = [load.get(k, 0) for k in ("active", "queued", "capacity")]
        if not all(isinstance(c, int) and 0 <= c < 1 << 31 for c in counts):
            raise FormatError("heartbeat load counts must be small non-negative integers")
        heartbeat = cls(
            node_id=_str(message, "node_id"),
            issued_at=_str(message, "issued_at"),
            active=counts[0],
            queued=counts[1],
            capacity=counts[2],
            cached=_str_list(message, "cached"),
        )
        parse_time(heartbeat.issued_at, what="issued_at")
        if heartbeat.node_id != key.key_id:
            raise VerificationError(
                "heartbeat names another node", check=Check.HEARTBEAT, node=heartbeat.node_id
            )
        return heartbeat


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
        inputs = _obj(message, "inputs")
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
            job_id=_str(message, "job_id", max_len=128),
            node_id=_str(message, "node_id"),
            request_id=_str(message, "request_id", max_len=256),
            model=Digest.from_text(_str(message, "model")),
            inputs={str(k): Digest.from_text(str(v)) for k, v in inputs.items()},
            policy=_str(message, "policy", max_len=256),
            issued_at=_str(message, "issued_at"),
            expires_at=_str(message, "expires_at"),
            trace=trace,
            spot=None if message.get("spot") is None else Digest.from_text(_str(message, "spot")),
            kind=kind if isinstance(kind, str) else repr(kind)[:40],
            request_digest=None
            if signed is None
            else Digest.from_text(_str(message, "request_digest")),
            retain_until=None
            if message.get("retain_until") is None
            else _str(message, "retain_until", max_len=64),
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


def descriptor_models(values: Sequence[str]) -> tuple[str, ...]:
    """Validate a descriptor's model list: ``"*"``, digests, or ``relay:<name>`` for the
    upstream model a relay node fronts (docs/llm.md, "Relay engine")."""
    for value in values:
        if value.startswith("relay:"):
            if not 6 < len(value) <= 256:
                raise FormatError("a relay model name is 1-250 characters", got=value[:40])
        elif value != "*":
            Digest.from_text(value)
    return tuple(values)


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
        report = _obj(predicate, "report")
        if not isinstance(report.get("accepted"), bool):
            raise FormatError("prefill report needs a boolean 'accepted'", member="report")
        times = _obj(predicate, "timestamps")
        check = PrefillCheck(
            receipt=statement.subjects[0].digest,
            report=report,
            model=Digest.from_text(_str(_obj(predicate, "model"), "digest")),
            runtime=_obj(predicate, "runtime"),
            node_id=_str(_obj(predicate, "node"), "id"),
            request_id=_str(_obj(predicate, "request"), "id", max_len=256),
            started=_str(times, "started"),
            finished=_str(times, "finished"),
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
