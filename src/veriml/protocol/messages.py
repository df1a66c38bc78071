"""Node descriptors, heartbeats and jobs: RFC 8785 JSON in DSSE envelopes (docs/network.md).

Every ``open`` checks, in order: (1) the envelope's payload type, (2) the signature by the
expected key, (3) the message ``type`` and members, (4) the freshness and binding rules of the
message. Failures raise :class:`SignatureError` or :class:`VerificationError` with ``check``
naming the step; malformed members raise :class:`FormatError`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, KeyFileError, SignatureError, VerificationError
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import format_time, parse_time

__all__ = [
    "HEARTBEAT_TYPE",
    "JOB_TYPE",
    "NODE_DESCRIPTOR_TYPE",
    "Heartbeat",
    "Job",
    "NodeDescriptor",
    "format_time",
    "open_message",
    "parse_time",
    "sign_message",
]

NODE_DESCRIPTOR_TYPE = "application/vnd.veriml.node-descriptor+json"
HEARTBEAT_TYPE = "application/vnd.veriml.heartbeat+json"
JOB_TYPE = "application/vnd.veriml.job+json"
MAX_MESSAGE_BYTES = 64 * 1024
DESCRIPTOR_MAX_AGE = dt.timedelta(minutes=5)


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
            check="payload-type",
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
            check="message-type",
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


@dataclass(frozen=True, slots=True)
class NodeDescriptor:
    """What a node says about itself when it registers; signed by the node's own key."""

    public_key: str
    operator: str
    endpoint: str
    issued_at: str
    nonce: str
    engines: tuple[str, ...] = ("onnxruntime",)
    models: tuple[str, ...] = ("*",)
    hardware: Mapping[str, Any] = field(default_factory=dict)
    runtime: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> VerifyingKey:
        return VerifyingKey.from_pem(self.public_key.encode())

    @property
    def node_id(self) -> str:
        return self.key.key_id

    def serves(self, model: Digest) -> bool:
        return "*" in self.models or model.to_text() in self.models

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "node-descriptor",
            "node_id": self.node_id,
            "public_key": self.public_key,
            "operator": self.operator,
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
        """Check a descriptor against the key it carries. ``max_age=None`` skips freshness
        (for re-checking an old descriptor from the log)."""
        try:
            unverified = parse_json_object(envelope.payload, what="node descriptor")
            key = VerifyingKey.from_pem(_str(unverified, "public_key", max_len=4096).encode())
        except (FormatError, KeyFileError) as exc:
            raise VerificationError(
                "node descriptor does not carry a usable key",
                check="descriptor",
                reason=exc.message,
            ) from exc
        if key.kind != "ed25519":
            raise VerificationError("node keys are Ed25519", check="descriptor", got=key.kind)
        message = open_message(envelope, NODE_DESCRIPTOR_TYPE, key, message_type="node-descriptor")
        descriptor = cls(
            public_key=message["public_key"],
            operator=_str(message, "operator", max_len=128),
            endpoint=_str(message, "endpoint"),
            issued_at=_str(message, "issued_at"),
            nonce=_str(message, "nonce", max_len=128),
            engines=_str_list(message, "engines"),
            models=descriptor_models(_str_list(message, "models")),
            hardware=_obj(message, "hardware"),
            runtime=_obj(message, "runtime"),
        )
        # 4. The node id is the signing key's id, and the descriptor is fresh.
        if message.get("node_id") != descriptor.node_id:
            raise VerificationError(
                "node id is not the signing key's id",
                check="descriptor",
                claimed=message.get("node_id"),
                calculated=descriptor.node_id,
            )
        if max_age is not None:
            issued = parse_time(descriptor.issued_at, what="issued_at")
            current = now or dt.datetime.now(dt.UTC)
            if abs(current - issued) > max_age:
                raise VerificationError(
                    "node descriptor is stale or from the future",
                    check="freshness",
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
                "heartbeat names another node", check="heartbeat", node=heartbeat.node_id
            )
        return heartbeat


@dataclass(frozen=True, slots=True)
class Job:
    """A unit of work the coordinator signs for one node. Inputs travel beside it, by digest."""

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
    ) -> Job:
        """Check a job for this node: signature, addressee and validity window.

        Replays (a ``job_id`` seen before) are the node's to refuse: it keeps the ids.
        """
        try:
            message = open_message(envelope, JOB_TYPE, coordinator_key, message_type="job")
        except SignatureError as exc:
            raise SignatureError(
                "job is not signed by this node's coordinator", check="job-signature"
            ) from exc
        inputs = _obj(message, "inputs")
        trace = message.get("trace", False)
        if not isinstance(trace, bool):
            raise FormatError("job member 'trace' must be a boolean")
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
        )
        if job.node_id != node_id:
            raise VerificationError(
                "job is addressed to another node",
                check="job-node",
                expected=node_id,
                got=job.node_id,
            )
        current = now or dt.datetime.now(dt.UTC)
        if parse_time(job.issued_at, what="issued_at") > current + skew:
            raise VerificationError(
                "job is issued in the future", check="job-time", issued_at=job.issued_at
            )
        if parse_time(job.expires_at, what="expires_at") <= current:
            raise VerificationError(
                "job has expired", check="job-expired", expires_at=job.expires_at
            )
        return job

    def check_inputs(self, digests: Mapping[str, Digest]) -> None:
        """Raise unless the tensors that came with the job are the ones it signed."""
        if dict(digests) != dict(self.inputs):
            raise VerificationError(
                "job inputs do not match their signed digests",
                check="job-inputs",
                expected=sorted(self.inputs),
                got=sorted(digests),
            )


def descriptor_models(values: Sequence[str]) -> tuple[str, ...]:
    """Validate a descriptor's model list: ``"*"`` or digests."""
    for value in values:
        if value != "*":
            Digest.from_text(value)
    return tuple(values)
