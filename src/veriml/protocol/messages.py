"""Signed network messages: node descriptors and heartbeats, RFC 8785 JSON in DSSE envelopes
(docs/network.md), and the opening rules every message shares (jobs: :mod:`veriml.protocol.jobs`;
prefill checks: :mod:`veriml.protocol.prefill_check`).

Every ``open`` checks, in order: (1) the envelope's payload type, (2) the signature by the
expected key, (3) the message ``type`` and members, (4) the freshness and binding rules of the
message. Failures raise :class:`SignatureError` or :class:`VerificationError` with ``check``
naming the step; malformed members raise :class:`FormatError`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    FormatError,
    KeyFileError,
    LimitExceededError,
    VerificationError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import format_time, parse_time
from veriml.protocol.accounts import OperatorBinding

__all__ = [
    "HEARTBEAT_TYPE",
    "NODE_DESCRIPTOR_TYPE",
    "Heartbeat",
    "NodeDescriptor",
    "format_time",
    "node_endpoint",
    "open_message",
    "parse_time",
    "sign_message",
]

NODE_DESCRIPTOR_TYPE = "application/vnd.veriml.node-descriptor+json"
HEARTBEAT_TYPE = "application/vnd.veriml.heartbeat+json"
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


def text_member(message: Mapping[str, Any], key: str, *, max_len: int = 2048) -> str:
    value = message.get(key)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise FormatError(f"message member {key!r} must be a non-empty string", member=key)
    return value


def text_list_member(message: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = message.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FormatError(f"message member {key!r} must be a list of strings", member=key)
    return tuple(value)


def object_member(message: Mapping[str, Any], key: str) -> dict[str, Any]:
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
    value = object_member(message, key)
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
            object.__setattr__(self, "operator", text_member(payload, "operator", max_len=128))

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
            pem = text_member(unverified, "public_key", max_len=4096)
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
            binding = Envelope.from_json(object_member(message, "operator_binding"))
        except FormatError as exc:
            raise VerificationError(
                "node descriptor carries no operator binding",
                check=Check.OPERATOR_BINDING,
                reason=exc.message,
            ) from exc
        descriptor = cls(
            public_key=message["public_key"],
            operator_binding=binding,
            operator=text_member(message, "operator", max_len=128),
            endpoint=text_member(message, "endpoint", max_len=MAX_ENDPOINT_CHARS),
            issued_at=text_member(message, "issued_at", max_len=64),
            nonce=text_member(message, "nonce", max_len=128),
            engines=text_list_member(message, "engines"),
            models=text_list_member(message, "models"),
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
        load = object_member(message, "load")
        counts = [load.get(k, 0) for k in ("active", "queued", "capacity")]
        if not all(isinstance(c, int) and 0 <= c < 1 << 31 for c in counts):
            raise FormatError("heartbeat load counts must be small non-negative integers")
        heartbeat = cls(
            node_id=text_member(message, "node_id"),
            issued_at=text_member(message, "issued_at"),
            active=counts[0],
            queued=counts[1],
            capacity=counts[2],
            cached=text_list_member(message, "cached"),
        )
        parse_time(heartbeat.issued_at, what="issued_at")
        if heartbeat.node_id != key.key_id:
            raise VerificationError(
                "heartbeat names another node", check=Check.HEARTBEAT, node=heartbeat.node_id
            )
        return heartbeat


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
