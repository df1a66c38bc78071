"""The entries that describe the network (docs/network.md, "Log entries"; docs/ledger.md,
"Entries"): models and the namespaces they claim, nodes, answered inferences, the ledger's
rules and bond map (``state``), and the epochs of the coordinator's randomness (``beacon``).
Pure: no I/O.
"""

# member() returns a dataclasses.field, which ruff cannot see through:
# ruff: noqa: RUF009

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.ledger.entries.base import (
    BaseEntry,
    check_amount,
    check_digest,
    check_id,
    check_members,
    check_time,
    member,
)
from veriml.ledger.rules import Rules
from veriml.protocol.accounts import account_key
from veriml.protocol.messages import NodeDescriptor
from veriml.protocol.policy import Verdict

__all__ = [
    "REQUEST_MEMBERS",
    "BeaconEntry",
    "InferenceEntry",
    "ModelEntry",
    "NamespaceEntry",
    "NodeEntry",
    "StateEntry",
    "namespace_of",
]


def namespace_of(name: str) -> str:
    """The namespace a model name belongs to: the part before the first ``/``
    (``acme/iris`` -> ``acme``), or the whole name when it has none (``iris``)."""
    return name.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class ModelEntry(BaseEntry):
    """A model registered on the hub, after its OMS signature verified.

    A hub whose operator allows unsigned publishing registers models without a signature:
    their ``publisher`` and ``signature`` are ``null`` and the entry says ``"unsigned": true``.
    Such a model owns no name (docs/models.md, "Names"): it is reachable by digest only.
    """

    TYPE = "model"

    digest: Digest
    files_digest: Digest
    name: str
    version: str
    publisher_key_id: str | None
    publisher_key: str | None
    signature: Digest | None
    size: int
    registered_at: str
    task: str | None = None
    license: str | None = None
    parents: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def _check(self) -> None:
        signed = (self.publisher_key_id, self.publisher_key, self.signature)
        if any(v is None for v in signed) and any(v is not None for v in signed):
            raise FormatError("a model entry has a publisher and a signature, or neither")
        if self.publisher_key is not None:
            calculated = account_key(self.publisher_key).key_id
            if calculated != self.publisher_key_id:
                raise FormatError(
                    "a model entry's publisher key id is not its key's",
                    claimed=str(self.publisher_key_id)[:80],
                    calculated=calculated,
                )

    @property
    def unsigned(self) -> bool:
        return self.publisher_key is None

    @property
    def namespace(self) -> str:
        return namespace_of(self.name)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "digest": self.digest.to_text(),
            "files_digest": self.files_digest.to_text(),
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "license": self.license,
            "parents": list(self.parents),
            "datasets": list(self.datasets),
            "publisher": None
            if self.publisher_key is None
            else {"key_id": self.publisher_key_id, "public_key": self.publisher_key},
            "signature": None if self.signature is None else self.signature.to_text(),
            "size": self.size,
            "registered_at": self.registered_at,
        }
        if self.unsigned:
            out["unsigned"] = True
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        publisher = obj["publisher"]
        signature = obj["signature"]
        if (publisher is None) != (obj.get("unsigned") is True) or (
            "unsigned" in obj and obj["unsigned"] is not True
        ):
            raise FormatError('a model without a publisher says "unsigned": true, and only it')
        return cls(
            digest=Digest.from_text(obj["digest"]),
            files_digest=Digest.from_text(obj["files_digest"]),
            name=str(obj["name"]),
            version=str(obj["version"]),
            task=None if obj.get("task") is None else str(obj["task"]),
            license=None if obj.get("license") is None else str(obj["license"]),
            parents=tuple(str(p) for p in obj.get("parents", [])),
            datasets=tuple(str(d) for d in obj.get("datasets", [])),
            publisher_key_id=None if publisher is None else str(publisher["key_id"]),
            publisher_key=None if publisher is None else str(publisher["public_key"]),
            signature=None if signature is None else Digest.from_text(signature),
            size=int(obj["size"]),
            registered_at=str(obj["registered_at"]),
        )


def _namespace(kind: str, label: str, value: object) -> str:
    name = check_id(kind, label, value)
    if "/" in name or name != name.strip():
        raise FormatError("a namespace has no '/' and no surrounding spaces")
    return name


def _public_key(kind: str, label: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 4096:
        raise FormatError(f"{kind} {label} must be a PEM public key")
    return value


@dataclass(frozen=True, slots=True)
class NamespaceEntry(BaseEntry):
    """A namespace is claimed by the publisher key that first published a model in it
    (docs/models.md, "Names"); only that key's models may use names in it afterwards. The fold
    refuses a second claim and any signed model whose publisher is not the owner. The JSON
    also names the ``owner``: the key id of ``owner_key``, checked when parsed."""

    TYPE = "namespace"

    namespace: str = member(_namespace)
    owner_key: str = member(_public_key)
    model: Digest = member(check_digest, dump=Digest.to_text)
    at: str = member(check_time)

    @property
    def owner(self) -> str:
        """The owner's key id."""
        return account_key(self.owner_key).key_id

    def to_json(self) -> dict[str, Any]:
        return BaseEntry.to_json(self) | {"owner": self.owner}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        entry = cls._parse(obj, derived=("owner",))
        if entry.owner != obj["owner"]:
            raise FormatError("namespace owner is not its key's id", owner=str(obj["owner"])[:80])
        return entry


@dataclass(frozen=True, slots=True)
class NodeEntry(BaseEntry):
    """A node registration: the node's own signed descriptor, re-checkable from the log."""

    TYPE = "node"

    descriptor: Envelope = member(dump=Envelope.to_json)

    def open(self) -> NodeDescriptor:
        """The descriptor, its signature checked (freshness is not: the entry may be old)."""
        return NodeDescriptor.open(self.descriptor, max_age=None)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        return cls(Envelope.from_json(obj["descriptor"]))


REQUEST_MEMBERS = ("id", "digest", "model", "policy")
"""The logged request's own members; what a coordinator adds (``client``, ``kind``) may never
take their place."""


@dataclass(frozen=True, slots=True)
class InferenceEntry(BaseEntry):
    """One answered inference: the request, every node's receipt, the verdict, and the
    ``state`` entry (by log index) whose bond map the nodes were scheduled under.

    ``extra`` holds the request members beyond :data:`REQUEST_MEMBERS` (the signer's key id
    as ``client``, an LLM request's ``kind``); an ``extra`` that names one of those is a
    :class:`FormatError`, so unsigned additions can never stand in for logged fields.
    """

    TYPE = "inference"

    request_id: str
    request_digest: Digest
    model: Digest
    policy: str
    receipts: tuple[Envelope, ...]
    verdict: Verdict
    extra: Mapping[str, Any] = field(default_factory=dict)
    state: int | None = member(check_amount, absent="omit", default=None)

    def _check(self) -> None:
        taken = sorted(set(self.extra) & set(REQUEST_MEMBERS))
        if taken:
            raise FormatError(
                "an inference request's extra members may not replace its own",
                members=",".join(taken),
            )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.TYPE,
            "request": dict(self.extra)
            | {
                "id": self.request_id,
                "digest": self.request_digest.to_text(),
                "model": self.model.to_text(),
                "policy": self.policy,
            },
            "receipts": [r.to_json() for r in self.receipts],
            "verdict": self.verdict.to_json(),
        }
        if self.state is not None:
            out["state"] = self.state
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        request = dict(obj["request"])
        check_members(obj, cls.TYPE, ("request", "receipts", "verdict"), ("state",))
        return cls(
            request_id=str(request["id"]),
            request_digest=Digest.from_text(request["digest"]),
            model=Digest.from_text(request["model"]),
            policy=str(request["policy"]),
            receipts=tuple(Envelope.from_json(r) for r in obj["receipts"]),
            verdict=Verdict.from_json(obj["verdict"]),
            extra={k: v for k, v in request.items() if k not in REQUEST_MEMBERS},
            state=obj.get("state"),
        )


def _rules(kind: str, label: str, value: object) -> Rules:
    if not isinstance(value, Rules):
        raise FormatError(f"{kind} {label} must be Rules")
    return value


@dataclass(frozen=True, slots=True)
class StateEntry(BaseEntry):
    """The ledger's rules and its bond map at this point of the log (docs/ledger.md,
    "Entries" and "State"): ``rules`` in force from here on, and ``bonds`` = ``{"root", "size"}``,
    the :class:`~veriml.ledger.bonds.BondMap` of every account's stake. The fold recomputes the
    root and refuses an entry that differs; clients check an operator's stake against it with
    a short proof. The coordinator logs one when it starts and after every change of stake."""

    TYPE = "state"

    rules: Rules = member(_rules)
    root: Digest = member(check_digest, label="bonds root")
    size: int = member(check_amount, label="bonds size")
    at: str = member(check_time)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.TYPE,
            "rules": self.rules.to_json(),
            "bonds": {"root": self.root.to_text(), "size": self.size},
            "at": self.at,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        check_members(obj, cls.TYPE, ("rules", "bonds", "at"))
        bonds = obj["bonds"]
        if not isinstance(bonds, Mapping) or set(bonds) != {"root", "size"}:
            raise FormatError('state bonds must be {"root", "size"}')
        return cls(Rules.from_json(obj["rules"]), bonds["root"], bonds["size"], obj["at"])


def _reveal(kind: str, label: str, value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 32:
        raise FormatError(f"{kind} {label} is a 32-byte key")
    return value


def _reveal_hex(label: str, value: object) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise FormatError(f"beacon {label} must be 64 hex digits")
    try:
        key = bytes.fromhex(value)
    except ValueError as exc:
        raise FormatError(f"beacon {label} must be 64 hex digits") from exc
    if key.hex() != value:
        raise FormatError(f"beacon {label} must be lowercase hex")
    return key


@dataclass(frozen=True, slots=True)
class BeaconEntry(BaseEntry):
    """Epoch ``epoch`` of the coordinator's randomness begins: ``commitment`` is
    ``SHA-256("veriml-beacon/v1\\n" || key)`` of its secret key, and ``reveal`` (hex) is the
    key of epoch ``epoch - 2``, now that every job drawn from it has long expired
    (docs/verification.md, "Randomness"). Epochs are numbered from 0 without gaps; an epoch
    whose key was lost is left unrevealed (``reveal`` omitted), which the fold allows only if
    no request drew from it."""

    TYPE = "beacon"

    epoch: int = member(check_amount)
    commitment: Digest = member(check_digest, dump=Digest.to_text)
    at: str = member(check_time)
    reveal: bytes | None = member(
        _reveal, dump=bytes.hex, load=_reveal_hex, absent="omit", default=None
    )
