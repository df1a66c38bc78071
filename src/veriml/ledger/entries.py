"""The log's entry types (docs/network.md, "Log entries").

Each entry is an RFC 8785 JSON object with a ``type``, at most 65,535 bytes (the tile entry
bundle limit). ``to_bytes`` writes the canonical bytes that are logged; ``parse_entry`` reads
any of them back. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.protocol.messages import NodeDescriptor
from veriml.tlog.tiles import MAX_ENTRY_SIZE
from veriml.verify.policy import Verdict

__all__ = [
    "MAX_ENTRY_BYTES",
    "Entry",
    "InferenceEntry",
    "ModelEntry",
    "NodeEntry",
    "parse_entry",
]

# The log's own limit: a tile entry bundle's uint16 length prefix.
MAX_ENTRY_BYTES = MAX_ENTRY_SIZE


def _encode(obj: dict[str, Any]) -> bytes:
    data = canonicalize(obj)
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError("log entry is too large", size=len(data), limit=MAX_ENTRY_BYTES)
    return data


@dataclass(frozen=True, slots=True)
class ModelEntry:
    """A model registered on the hub, after its OMS signature verified."""

    digest: Digest
    files_digest: Digest
    name: str
    version: str
    publisher_key_id: str
    publisher_key: str
    signature: Digest
    size: int
    registered_at: str
    task: str | None = None
    license: str | None = None
    parents: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "model",
            "digest": self.digest.to_text(),
            "files_digest": self.files_digest.to_text(),
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "license": self.license,
            "parents": list(self.parents),
            "datasets": list(self.datasets),
            "publisher": {"key_id": self.publisher_key_id, "public_key": self.publisher_key},
            "signature": self.signature.to_text(),
            "size": self.size,
            "registered_at": self.registered_at,
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelEntry:
        publisher = obj["publisher"]
        return cls(
            digest=Digest.from_text(obj["digest"]),
            files_digest=Digest.from_text(obj["files_digest"]),
            name=str(obj["name"]),
            version=str(obj["version"]),
            task=None if obj.get("task") is None else str(obj["task"]),
            license=None if obj.get("license") is None else str(obj["license"]),
            parents=tuple(str(p) for p in obj.get("parents", [])),
            datasets=tuple(str(d) for d in obj.get("datasets", [])),
            publisher_key_id=str(publisher["key_id"]),
            publisher_key=str(publisher["public_key"]),
            signature=Digest.from_text(obj["signature"]),
            size=int(obj["size"]),
            registered_at=str(obj["registered_at"]),
        )


@dataclass(frozen=True, slots=True)
class NodeEntry:
    """A node registration: the node's own signed descriptor, re-checkable from the log."""

    descriptor: Envelope

    def open(self) -> NodeDescriptor:
        """The descriptor, its signature checked (freshness is not: the entry may be old)."""
        return NodeDescriptor.open(self.descriptor, max_age=None)

    def to_json(self) -> dict[str, Any]:
        return {"type": "node", "descriptor": self.descriptor.to_json()}

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NodeEntry:
        return cls(Envelope.from_json(obj["descriptor"]))


@dataclass(frozen=True, slots=True)
class InferenceEntry:
    """One answered inference: the request, every node's receipt, and the verdict."""

    request_id: str
    request_digest: Digest
    model: Digest
    policy: str
    receipts: tuple[Envelope, ...]
    verdict: Verdict
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "inference",
            "request": {
                "id": self.request_id,
                "digest": self.request_digest.to_text(),
                "model": self.model.to_text(),
                "policy": self.policy,
            }
            | dict(self.extra),
            "receipts": [r.to_json() for r in self.receipts],
            "verdict": self.verdict.to_json(),
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InferenceEntry:
        request = dict(obj["request"])
        known = {"id", "digest", "model", "policy"}
        return cls(
            request_id=str(request["id"]),
            request_digest=Digest.from_text(request["digest"]),
            model=Digest.from_text(request["model"]),
            policy=str(request["policy"]),
            receipts=tuple(Envelope.from_json(r) for r in obj["receipts"]),
            verdict=Verdict.from_json(obj["verdict"]),
            extra={k: v for k, v in request.items() if k not in known},
        )


Entry = ModelEntry | NodeEntry | InferenceEntry
_TYPES: dict[str, Any] = {"model": ModelEntry, "node": NodeEntry, "inference": InferenceEntry}


def parse_entry(data: bytes) -> Entry:
    """Parse a logged entry. Unknown types and malformed members are :class:`FormatError`."""
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError("log entry is too large", size=len(data))
    obj = parse_json_object(data, what="log entry")
    kind = obj.get("type")
    parser = _TYPES.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise FormatError("unknown log entry type", type=str(kind)[:40])
    try:
        entry: Entry = parser.from_json(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError("malformed log entry", type=kind, reason=repr(exc)[:200]) from exc
    return entry
