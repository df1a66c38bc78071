"""The log's entry types (docs/network.md, "Log entries"; docs/ledger.md for the ledger's).

The hub, registry and inference service log ``model``, ``node`` and ``inference`` entries; the
ledger adds ``deposit``, ``stake``, ``unstake``, ``fee``, ``challenge``, ``verdict``, ``slash``,
``reward`` and ``reputation`` (docs/verification.md, "Ledger"). Ledger entries are checked
when built and when parsed: integer amounts in [0, 2**53), one spelling of every timestamp,
exactly the documented members, so an entry's bytes are a function of its value.

Each entry is an RFC 8785 JSON object with a ``type``, at most 65,535 bytes (the tile entry
bundle limit). ``to_bytes`` writes the canonical bytes that are logged; ``parse_entry`` reads
any of them back. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, SignatureError, VerificationError
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.rules import Rules
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.messages import NodeDescriptor
from veriml.protocol.policy import Verdict
from veriml.tlog.tiles import MAX_ENTRY_SIZE

__all__ = [
    "AMOUNT_LIMIT",
    "MAX_ENTRY_BYTES",
    "REASONS",
    "REQUEST_MEMBERS",
    "WINNERS",
    "BeaconEntry",
    "ChallengeEntry",
    "DepositEntry",
    "DisputeVerdictEntry",
    "Entry",
    "FeeEntry",
    "InferenceEntry",
    "LedgerEntry",
    "ModelEntry",
    "NamespaceEntry",
    "NodeEntry",
    "Reason",
    "ReputationEntry",
    "RewardEntry",
    "SlashEntry",
    "StakeEntry",
    "StateEntry",
    "UnstakeEntry",
    "Winner",
    "namespace_of",
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
    """A model registered on the hub, after its OMS signature verified.

    A hub whose operator allows unsigned publishing registers models without a signature:
    their ``publisher`` and ``signature`` are ``null`` and the entry says ``"unsigned": true``.
    Such a model owns no name (docs/models.md, "Names"): it is reachable by digest only.
    """

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

    def __post_init__(self) -> None:
        signed = (self.publisher_key_id, self.publisher_key, self.signature)
        if any(v is None for v in signed) and any(v is not None for v in signed):
            raise FormatError("a model entry has a publisher and a signature, or neither")
        if self.publisher_key is not None:
            from veriml.protocol.accounts import account_key

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
            "type": "model",
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

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ModelEntry:
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


REQUEST_MEMBERS = ("id", "digest", "model", "policy")
"""The logged request's own members; what a coordinator adds (``client``, ``kind``) may never
take their place."""


@dataclass(frozen=True, slots=True)
class InferenceEntry:
    """One answered inference: the request, every node's receipt, the verdict, and the
    ``state`` entry (by log index) whose bond map the nodes were scheduled under.

    ``extra`` holds the request members beyond :data:`REQUEST_MEMBERS` (the signer's key id
    as ``client``, an LLM request's ``kind``); an ``extra`` that names one of those is a
    :class:`FormatError`, so unsigned additions can never stand in for logged fields.
    """

    request_id: str
    request_digest: Digest
    model: Digest
    policy: str
    receipts: tuple[Envelope, ...]
    verdict: Verdict
    extra: Mapping[str, Any] = field(default_factory=dict)
    state: int | None = None

    def __post_init__(self) -> None:
        taken = sorted(set(self.extra) & set(REQUEST_MEMBERS))
        if taken:
            raise FormatError(
                "an inference request's extra members may not replace its own",
                members=",".join(taken),
            )
        if self.state is not None:
            _amount("inference", "state", self.state)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "inference",
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

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InferenceEntry:
        request = dict(obj["request"])
        _members(obj, "inference", ("request", "receipts", "verdict"), ("state",))
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


# -- ledger entries (docs/verification.md, "Ledger / Entries"; docs/ledger.md) -----------------

# Amounts are integers in [0, 2**53): the integers RFC 8785 can write (it writes numbers as
# IEEE 754 doubles; I-JSON, RFC 7493 section 2.2), so every entry and every folded state has a
# canonical form, and every implementation of the fold reads them exactly.
AMOUNT_LIMIT = 1 << 53
_MAX_TEXT = 256
_MAX_DEADLINE = 10**9

Winner = Literal["defendant", "challenger", "none", "neither"]
Reason = Literal["referee", "timeout", "inconsistent", "invalid-proof", "no-difference"]
WINNERS: tuple[Winner, ...] = ("defendant", "challenger", "none", "neither")
REASONS: tuple[Reason, ...] = (
    "referee",
    "timeout",
    "inconsistent",
    "invalid-proof",
    "no-difference",
)
MODES = ("bitwise", "tolerance")


def _amount(kind: str, member: str, value: object, *, signed: bool = False) -> int:
    # type() rather than isinstance(): bool is an int subclass, and True is not an amount.
    if type(value) is not int:
        raise FormatError(f"{kind} {member} must be an integer", got=type(value).__name__)
    low = -AMOUNT_LIMIT + 1 if signed else 0
    if not low <= value < AMOUNT_LIMIT:
        raise FormatError(f"{kind} {member} is out of range", got=str(value)[:40])
    return value


def _account(kind: str, member: str, value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise FormatError(
            f"{kind} {member} must be an account id of 1-{_MAX_TEXT} characters",
            got=str(value)[:80],
        )
    return value


def _text(kind: str, member: str, value: object) -> str:
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise FormatError(f"{kind} {member} must be a string of at most {_MAX_TEXT} characters")
    return value


def _time(kind: str, member: str, value: object) -> str:
    """A timestamp in the one spelling :func:`format_time` writes: each instant has exactly
    one text, so entries and folded states have one byte form, and texts compare in time
    order."""
    when = parse_time(value, what=f"{kind} {member}")
    if format_time(when) != value:
        raise FormatError(
            f"{kind} {member} must be written YYYY-MM-DDTHH:MM:SS.ffffffZ", got=str(value)[:40]
        )
    return str(value)


def _choice(kind: str, member: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise FormatError(
            f"{kind} {member} must be one of {', '.join(choices)}", got=str(value)[:40]
        )
    return str(value)


def _digest(kind: str, member: str, value: object) -> Digest:
    if isinstance(value, Digest):
        return value
    if not isinstance(value, str):
        raise FormatError(f"{kind} {member} must be a sha256:<hex> digest")
    return Digest.from_text(value)


def _digest_map(
    kind: str, member: str, value: object, *, names: tuple[str, ...] | None = None
) -> dict[str, Digest]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{kind} {member} must be an object of digests")
    out: dict[str, Digest] = {}
    for name, digest in value.items():
        if names is not None:
            _choice(kind, f"{member} name", name, names)
        else:
            _account(kind, f"{member} name", name)
        out[name] = _digest(kind, f"{member}[{name}]", digest)
    return out


def _members(
    obj: Mapping[str, Any], kind: str, required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    """Exactly the documented members: one spelling per entry, so its bytes round-trip."""
    present = set(obj) - {"type"}
    missing = [m for m in required if m not in present]
    if missing:
        raise FormatError(f"{kind} entry is missing members", missing=",".join(missing))
    unknown = sorted(present - set(required) - set(optional))
    if unknown:
        raise FormatError(f"{kind} entry has unknown members", unknown=",".join(unknown)[:200])
    for name in optional:
        if name in obj and obj[name] is None:
            raise FormatError(f"{kind} {name} is omitted when absent, never null")


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


def _authorization(kind: str, value: object, **expected: object) -> LedgerRequest:
    """The signed ledger request an entry carries (``authorization``): a DSSE envelope signed
    by the account whose money moves (docs/ledger.md, "Authority"). Its signature is checked
    and its members must be the entry's own: ``expected`` maps request members to the entry's
    values. A mismatch is a :class:`FormatError`; an entry whose authorization does not open
    cannot be built or parsed."""
    if not isinstance(value, Envelope):
        raise FormatError(f"a {kind} entry carries its account's signed request (authorization)")
    try:
        request = LedgerRequest.open(value)
    except (VerificationError, SignatureError) as exc:
        raise FormatError(
            f"{kind} authorization does not verify", reason=exc.diagnostics()[:300]
        ) from exc
    for name, wanted in expected.items():
        got = getattr(request, name)
        if got != wanted:
            raise FormatError(
                f"{kind} authorization is for another {name}",
                expected=str(wanted)[:80],
                got=str(got)[:80],
            )
    return request


def _envelope(obj: Mapping[str, Any], name: str) -> Envelope:
    value = obj[name]
    if not isinstance(value, Mapping):
        raise FormatError(f"{name} must be a DSSE envelope")
    return Envelope.from_json(value)


@dataclass(frozen=True, slots=True)
class DepositEntry:
    """Money enters the ledger: ``amount`` is minted into ``account``'s balance. The
    ``authorization`` is a ``deposit`` request signed by the ledger's admin account (the
    rules' ``admin``, checked by the fold) naming this account, amount and memo."""

    account: str
    amount: int
    at: str
    memo: str = ""
    authorization: Envelope | None = None

    def __post_init__(self) -> None:
        _account("deposit", "account", self.account)
        _amount("deposit", "amount", self.amount)
        _time("deposit", "at", self.at)
        _text("deposit", "memo", self.memo)
        _authorization(
            "deposit",
            self.authorization,
            op="deposit",
            to=self.account,
            amount=self.amount,
            memo=self.memo,
        )

    @property
    def request(self) -> LedgerRequest:
        return LedgerRequest.open(self.authorization)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        assert self.authorization is not None
        return {
            "type": "deposit",
            "account": self.account,
            "amount": self.amount,
            "memo": self.memo,
            "at": self.at,
            "authorization": self.authorization.to_json(),
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DepositEntry:
        _members(obj, "deposit", ("account", "amount", "memo", "at", "authorization"))
        return cls(
            obj["account"], obj["amount"], obj["at"], obj["memo"], _envelope(obj, "authorization")
        )


@dataclass(frozen=True, slots=True)
class StakeEntry:
    """``amount`` moves from ``account``'s balance into its stake (slashable); the
    ``authorization`` is the account's own signed ``stake`` request for that amount."""

    account: str
    amount: int
    at: str
    authorization: Envelope | None = None

    def __post_init__(self) -> None:
        _account("stake", "account", self.account)
        _amount("stake", "amount", self.amount)
        _time("stake", "at", self.at)
        _authorization(
            "stake", self.authorization, op="stake", account=self.account, amount=self.amount
        )

    @property
    def request(self) -> LedgerRequest:
        return LedgerRequest.open(self.authorization)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        assert self.authorization is not None
        return {
            "type": "stake",
            "account": self.account,
            "amount": self.amount,
            "at": self.at,
            "authorization": self.authorization.to_json(),
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StakeEntry:
        _members(obj, "stake", ("account", "amount", "at", "authorization"))
        return cls(obj["account"], obj["amount"], obj["at"], _envelope(obj, "authorization"))


@dataclass(frozen=True, slots=True)
class UnstakeEntry:
    """``amount`` of stake starts unbonding: still slashable until ``available_at``, then
    back in the balance (released by the first entry folded at or after that time)."""

    account: str
    amount: int
    at: str
    available_at: str
    authorization: Envelope | None = None

    def __post_init__(self) -> None:
        _account("unstake", "account", self.account)
        _amount("unstake", "amount", self.amount)
        _time("unstake", "at", self.at)
        _time("unstake", "available_at", self.available_at)
        if self.available_at < self.at:
            raise FormatError(
                "unstake available_at is before the entry's own time",
                at=self.at,
                available_at=self.available_at,
            )
        _authorization(
            "unstake", self.authorization, op="unstake", account=self.account, amount=self.amount
        )

    @property
    def request(self) -> LedgerRequest:
        return LedgerRequest.open(self.authorization)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        assert self.authorization is not None
        return {
            "type": "unstake",
            "account": self.account,
            "amount": self.amount,
            "available_at": self.available_at,
            "at": self.at,
            "authorization": self.authorization.to_json(),
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> UnstakeEntry:
        _members(obj, "unstake", ("account", "amount", "available_at", "at", "authorization"))
        return cls(
            obj["account"],
            obj["amount"],
            obj["at"],
            obj["available_at"],
            _envelope(obj, "authorization"),
        )


@dataclass(frozen=True, slots=True)
class FeeEntry:
    """``payer`` pays ``payee`` for one answered inference (request id ``inference``). The
    ``authorization`` is the payer's signed ``payment`` request for that request id; the fold
    keeps the fees paid under it within its amount."""

    payer: str
    payee: str
    amount: int
    inference: str
    at: str
    authorization: Envelope | None = None

    def __post_init__(self) -> None:
        _account("fee", "payer", self.payer)
        _account("fee", "payee", self.payee)
        _amount("fee", "amount", self.amount)
        _account("fee", "inference", self.inference)
        _time("fee", "at", self.at)
        _authorization(
            "fee", self.authorization, op="payment", account=self.payer, request=self.inference
        )

    @property
    def request(self) -> LedgerRequest:
        return LedgerRequest.open(self.authorization)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, Any]:
        assert self.authorization is not None
        return {
            "type": "fee",
            "payer": self.payer,
            "payee": self.payee,
            "amount": self.amount,
            "inference": self.inference,
            "at": self.at,
            "authorization": self.authorization.to_json(),
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> FeeEntry:
        _members(obj, "fee", ("payer", "payee", "amount", "inference", "at", "authorization"))
        return cls(
            obj["payer"],
            obj["payee"],
            obj["amount"],
            obj["inference"],
            obj["at"],
            _envelope(obj, "authorization"),
        )


def _trace(kind: str, member: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) != {"root", "size"}:
        raise FormatError(f"{kind} {member} must be a trace commitment {{root, size}}")
    root = _digest(kind, f"{member} root", value["root"]).to_text()
    return {"root": root, "size": _amount(kind, f"{member} size", value["size"])}


def _party(
    kind: str, member: str, value: object, required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    """A dispute party as plain JSON (digests as text), checked member by member."""
    if not isinstance(value, Mapping):
        raise FormatError(f"{kind} {member} must be an object")
    present = set(value)
    missing = [m for m in required if m not in present]
    unknown = sorted(present - set(required) - set(optional))
    if missing or unknown:
        raise FormatError(
            f"{kind} {member} has the wrong members",
            missing=",".join(missing) or None,
            unknown=",".join(unknown)[:200] or None,
        )
    out: dict[str, Any] = {}
    for name in sorted(present):
        item = value[name]
        if name in ("node", "account"):
            out[name] = _account(kind, f"{member} {name}", item)
        elif name == "receipt":
            out[name] = _digest(kind, f"{member} receipt", item).to_text()
        elif name == "trace":
            out[name] = _trace(kind, f"{member} trace", item)
        elif name == "statement":
            if not isinstance(item, Mapping):
                raise FormatError(f"{kind} {member} statement must be a DSSE envelope")
            out[name] = Envelope.from_json(item).to_json()
        else:  # outputs
            digests = _digest_map(kind, f"{member} outputs", item)
            out[name] = {k: d.to_text() for k, d in sorted(digests.items())}
    return out


@dataclass(frozen=True, slots=True)
class ChallengeEntry:
    """A dispute opens: ``challenger`` locks ``bond`` against ``defendant``'s receipt.

    ``defendant`` is ``{"node", "receipt", "trace", "statement"?}`` (the node id, the SHA-256
    of the challenged receipt's DSSE payload, its trace commitment ``{"root", "size"}``, and
    the receipt itself); ``challenger`` is ``{"account", "node"?, "trace", "outputs",
    "statement"?}`` (who pays the bond, its node when a node challenges, its own trace
    commitment and claimed output digests, and, for a node, its own signed statement about the
    inference: its receipt, or its prefill check). Both are kept as JSON (digests as
    ``sha256:`` text; :class:`Digest` values are accepted and converted), so the entry's bytes
    are exactly what was checked. The fold requires both sides' signatures: the defendant's
    receipt, and the challenger's statement or signed challenge request (``authorization``),
    so nobody is made a party to a dispute they did not sign into.

    A bond is the challenger's money: a challenge with ``bond > 0`` carries the challenger's
    signed ``challenge`` request (``authorization``) for this inference, defendant and bond.
    """

    dispute: str
    inference: str
    defendant: Mapping[str, Any]
    challenger: Mapping[str, Any]
    mode: str
    bond: int
    deadline_seconds: float
    at: str
    authorization: Envelope | None = None

    def __post_init__(self) -> None:
        _account("challenge", "dispute", self.dispute)
        _account("challenge", "inference", self.inference)
        required = ("node", "receipt", "trace")
        party = _party("challenge", "defendant", self.defendant, required, ("statement",))
        _set(self, "defendant", party)
        required = ("account", "trace", "outputs")
        party = _party("challenge", "challenger", self.challenger, required, ("node", "statement"))
        _set(self, "challenger", party)
        _choice("challenge", "mode", self.mode, MODES)
        _amount("challenge", "bond", self.bond)
        deadline = self.deadline_seconds
        if (
            type(deadline) not in (int, float)
            or not math.isfinite(deadline)
            or not 0 < deadline <= _MAX_DEADLINE
        ):
            raise FormatError(
                "challenge deadline_seconds must be a positive number of seconds",
                got=str(deadline)[:40],
            )
        _time("challenge", "at", self.at)
        if self.bond > 0 or self.authorization is not None:
            _authorization(
                "challenge",
                self.authorization,
                op="challenge",
                account=self.challenger_account,
                amount=self.bond,
                inference=self.inference,
                node=self.defendant_node,
            )

    @property
    def claim(self) -> Digest:
        """What one dispute may be opened about once: the challenged receipt and the outputs
        the challenger claims instead (SHA-256 of their RFC 8785 form)."""
        return Digest.of(
            canonicalize(
                {"receipt": self.defendant["receipt"], "outputs": self.challenger["outputs"]}
            )
        )

    @property
    def defendant_node(self) -> str:
        return str(self.defendant["node"])

    @property
    def challenger_account(self) -> str:
        return str(self.challenger["account"])

    def to_json(self) -> dict[str, Any]:
        out = {
            "type": "challenge",
            "dispute": self.dispute,
            "inference": self.inference,
            "defendant": dict(self.defendant),
            "challenger": dict(self.challenger),
            "mode": self.mode,
            "bond": self.bond,
            "deadline_seconds": self.deadline_seconds,
            "at": self.at,
        }
        if self.authorization is not None:
            out["authorization"] = self.authorization.to_json()
        return out

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChallengeEntry:
        members = ("dispute", "inference", "defendant", "challenger", "mode", "bond")
        _members(obj, "challenge", (*members, "deadline_seconds", "at"), ("authorization",))
        return cls(
            dispute=obj["dispute"],
            inference=obj["inference"],
            defendant=obj["defendant"],
            challenger=obj["challenger"],
            mode=obj["mode"],
            bond=obj["bond"],
            deadline_seconds=obj["deadline_seconds"],
            at=obj["at"],
            authorization=_envelope(obj, "authorization") if "authorization" in obj else None,
        )


@dataclass(frozen=True, slots=True)
class DisputeVerdictEntry:
    """A dispute closes (type ``verdict``): who won, why, and the evidence the referee used.

    ``node_index``/``op_type`` name the operator the bisection ended on (``None`` when the
    dispute ended before the referee: timeout, inconsistency, invalid proof, no difference);
    ``inputs`` are its agreed input digests, ``claims`` the parties' output digests
    (``defendant``/``challenger``), ``referee`` the referee's own output digests.
    """

    dispute: str
    winner: Winner
    reason: Reason
    at: str
    node_index: int | None = None
    op_type: str | None = None
    inputs: Mapping[str, Digest] = field(default_factory=dict)
    claims: Mapping[str, Digest] = field(default_factory=dict)
    referee: Mapping[str, Digest] = field(default_factory=dict)
    rounds: int = 0
    messages: int = 0

    def __post_init__(self) -> None:
        _account("verdict", "dispute", self.dispute)
        _choice("verdict", "winner", self.winner, WINNERS)
        _choice("verdict", "reason", self.reason, REASONS)
        _time("verdict", "at", self.at)
        if self.node_index is not None:
            _amount("verdict", "node_index", self.node_index)
        if self.op_type is not None:
            _account("verdict", "op_type", self.op_type)
        _set(self, "inputs", _digest_map("verdict", "inputs", self.inputs))
        parties = ("defendant", "challenger")
        _set(self, "claims", _digest_map("verdict", "claims", self.claims, names=parties))
        _set(self, "referee", _digest_map("verdict", "referee", self.referee))
        _amount("verdict", "rounds", self.rounds)
        _amount("verdict", "messages", self.messages)

    @property
    def challenger_lost(self) -> bool:
        """Whether the challenger's bond is forfeit: the defendant won, or both were wrong."""
        return self.winner in ("defendant", "neither")

    def to_json(self) -> dict[str, Any]:
        def texts(digests: Mapping[str, Digest]) -> dict[str, str]:
            return {name: d.to_text() for name, d in sorted(digests.items())}

        return {
            "type": "verdict",
            "dispute": self.dispute,
            "winner": self.winner,
            "reason": self.reason,
            "node_index": self.node_index,
            "op_type": self.op_type,
            "inputs": texts(self.inputs),
            "claims": texts(self.claims),
            "referee": texts(self.referee),
            "rounds": self.rounds,
            "messages": self.messages,
            "at": self.at,
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> DisputeVerdictEntry:
        members = ("node_index", "op_type", "inputs", "claims", "referee", "rounds", "messages")
        _members(obj, "verdict", ("dispute", "winner", "reason", *members, "at"))
        return cls(
            dispute=obj["dispute"],
            winner=obj["winner"],
            reason=obj["reason"],
            at=obj["at"],
            node_index=obj["node_index"],
            op_type=obj["op_type"],
            inputs=obj["inputs"],
            claims=obj["claims"],
            referee=obj["referee"],
            rounds=obj["rounds"],
            messages=obj["messages"],
        )


@dataclass(frozen=True, slots=True)
class SlashEntry:
    """``amount`` is taken from ``account``'s stake (then its unbonding, newest first) for
    losing ``dispute``: ``burned`` is destroyed, the rest held to reward that dispute's winner."""

    account: str
    amount: int
    burned: int
    dispute: str
    at: str

    def __post_init__(self) -> None:
        _account("slash", "account", self.account)
        _amount("slash", "amount", self.amount)
        _amount("slash", "burned", self.burned)
        if self.burned > self.amount:
            raise FormatError(
                "slash burns more than it takes", amount=self.amount, burned=self.burned
            )
        _account("slash", "dispute", self.dispute)
        _time("slash", "at", self.at)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "slash",
            "account": self.account,
            "amount": self.amount,
            "burned": self.burned,
            "dispute": self.dispute,
            "at": self.at,
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> SlashEntry:
        _members(obj, "slash", ("account", "amount", "burned", "dispute", "at"))
        return cls(obj["account"], obj["amount"], obj["burned"], obj["dispute"], obj["at"])


@dataclass(frozen=True, slots=True)
class RewardEntry:
    """``amount`` is paid to ``account``: out of ``dispute``'s held slash, or minted when the
    reward belongs to no dispute. ``dispute`` is omitted from the JSON when ``None``."""

    account: str
    amount: int
    reason: str
    at: str
    dispute: str | None = None

    def __post_init__(self) -> None:
        _account("reward", "account", self.account)
        _amount("reward", "amount", self.amount)
        _account("reward", "reason", self.reason)
        _time("reward", "at", self.at)
        if self.dispute is not None:
            _account("reward", "dispute", self.dispute)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "reward",
            "account": self.account,
            "amount": self.amount,
            "reason": self.reason,
            "at": self.at,
        }
        if self.dispute is not None:
            out["dispute"] = self.dispute
        return out

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RewardEntry:
        _members(obj, "reward", ("account", "amount", "reason", "at"), ("dispute",))
        return cls(obj["account"], obj["amount"], obj["reason"], obj["at"], obj.get("dispute"))


@dataclass(frozen=True, slots=True)
class ReputationEntry:
    """``account``'s reputation changes by ``delta`` (signed), for ``reason`` (and
    ``dispute``, omitted from the JSON when ``None``)."""

    account: str
    delta: int
    reason: str
    at: str
    dispute: str | None = None

    def __post_init__(self) -> None:
        _account("reputation", "account", self.account)
        _amount("reputation", "delta", self.delta, signed=True)
        _account("reputation", "reason", self.reason)
        _time("reputation", "at", self.at)
        if self.dispute is not None:
            _account("reputation", "dispute", self.dispute)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "reputation",
            "account": self.account,
            "delta": self.delta,
            "reason": self.reason,
            "at": self.at,
        }
        if self.dispute is not None:
            out["dispute"] = self.dispute
        return out

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ReputationEntry:
        _members(obj, "reputation", ("account", "delta", "reason", "at"), ("dispute",))
        return cls(obj["account"], obj["delta"], obj["reason"], obj["at"], obj.get("dispute"))


@dataclass(frozen=True, slots=True)
class StateEntry:
    """The ledger's rules and its bond map at this point of the log (docs/ledger.md,
    "State entries"): ``rules`` in force from here on, and ``bonds`` = ``{"root", "size"}``,
    the :class:`~veriml.ledger.bonds.BondMap` of every account's stake. The fold recomputes the
    root and refuses an entry that differs; clients check an operator's stake against it with
    a short proof. The coordinator logs one when it starts and after every change of stake."""

    rules: Rules
    root: Digest
    size: int
    at: str

    def __post_init__(self) -> None:
        if not isinstance(self.rules, Rules):
            raise FormatError("state rules must be Rules")
        _set(self, "root", _digest("state", "bonds root", self.root))
        _amount("state", "bonds size", self.size)
        _time("state", "at", self.at)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "state",
            "rules": self.rules.to_json(),
            "bonds": {"root": self.root.to_text(), "size": self.size},
            "at": self.at,
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> StateEntry:
        _members(obj, "state", ("rules", "bonds", "at"))
        bonds = obj["bonds"]
        if not isinstance(bonds, Mapping) or set(bonds) != {"root", "size"}:
            raise FormatError('state bonds must be {"root", "size"}')
        return cls(Rules.from_json(obj["rules"]), bonds["root"], bonds["size"], obj["at"])


@dataclass(frozen=True, slots=True)
class BeaconEntry:
    """Epoch ``epoch`` of the coordinator's randomness begins: ``commitment`` is
    ``SHA-256("veriml-beacon/v1\\n" || key)`` of its secret key, and ``reveal`` (hex) is the
    key of epoch ``epoch - 2``, now that every job drawn from it has long expired
    (docs/verification.md,
    "Randomness"). Epochs are numbered from 0 without gaps; an epoch whose key was lost is
    left unrevealed (``reveal`` omitted), which the fold allows only if no request drew from
    it."""

    epoch: int
    commitment: Digest
    at: str
    reveal: bytes | None = None

    def __post_init__(self) -> None:
        _amount("beacon", "epoch", self.epoch)
        _set(self, "commitment", _digest("beacon", "commitment", self.commitment))
        _time("beacon", "at", self.at)
        if self.reveal is not None and (
            not isinstance(self.reveal, bytes) or len(self.reveal) != 32
        ):
            raise FormatError("beacon reveal is a 32-byte key")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "beacon",
            "epoch": self.epoch,
            "commitment": self.commitment.to_text(),
            "at": self.at,
        }
        if self.reveal is not None:
            out["reveal"] = self.reveal.hex()
        return out

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> BeaconEntry:
        _members(obj, "beacon", ("epoch", "commitment", "at"), ("reveal",))
        reveal = obj.get("reveal")
        if reveal is not None and (not isinstance(reveal, str) or len(reveal) != 64):
            raise FormatError("beacon reveal must be 64 hex digits")
        try:
            key = None if reveal is None else bytes.fromhex(reveal)
        except ValueError as exc:
            raise FormatError("beacon reveal must be 64 hex digits") from exc
        if key is not None and key.hex() != reveal:
            raise FormatError("beacon reveal must be lowercase hex")
        return cls(obj["epoch"], obj["commitment"], obj["at"], key)


def namespace_of(name: str) -> str:
    """The namespace a model name belongs to: the part before the first ``/``
    (``acme/iris`` -> ``acme``), or the whole name when it has none (``iris``)."""
    return name.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class NamespaceEntry:
    """A namespace is claimed by the publisher key that first published a model in it
    (docs/models.md, "Names"); only that key's models may use names in it afterwards. The fold
    refuses a second claim and any signed model whose publisher is not the owner."""

    namespace: str
    owner_key: str
    model: Digest
    at: str

    def __post_init__(self) -> None:
        _account("namespace", "namespace", self.namespace)
        if "/" in self.namespace or self.namespace != self.namespace.strip():
            raise FormatError("a namespace has no '/' and no surrounding spaces")
        if not isinstance(self.owner_key, str) or not 0 < len(self.owner_key) <= 4096:
            raise FormatError("namespace owner_key must be a PEM public key")
        _set(self, "model", _digest("namespace", "model", self.model))
        _time("namespace", "at", self.at)

    @property
    def owner(self) -> str:
        """The owner's key id."""
        from veriml.protocol.accounts import account_key

        return account_key(self.owner_key).key_id

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "namespace",
            "namespace": self.namespace,
            "owner": self.owner,
            "owner_key": self.owner_key,
            "model": self.model.to_text(),
            "at": self.at,
        }

    def to_bytes(self) -> bytes:
        return _encode(self.to_json())

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> NamespaceEntry:
        _members(obj, "namespace", ("namespace", "owner", "owner_key", "model", "at"))
        entry = cls(obj["namespace"], obj["owner_key"], obj["model"], obj["at"])
        if entry.owner != obj["owner"]:
            raise FormatError("namespace owner is not its key's id", owner=str(obj["owner"])[:80])
        return entry


LedgerEntry = (
    DepositEntry
    | StakeEntry
    | UnstakeEntry
    | FeeEntry
    | ChallengeEntry
    | DisputeVerdictEntry
    | SlashEntry
    | RewardEntry
    | ReputationEntry
    | StateEntry
    | BeaconEntry
    | NamespaceEntry
)
"""The entries the ledger folds with a clock: each has an ``at`` time."""


Entry = ModelEntry | NodeEntry | InferenceEntry | LedgerEntry
_TYPES: dict[str, Any] = {
    "model": ModelEntry,
    "node": NodeEntry,
    "inference": InferenceEntry,
    "deposit": DepositEntry,
    "stake": StakeEntry,
    "unstake": UnstakeEntry,
    "fee": FeeEntry,
    "challenge": ChallengeEntry,
    "verdict": DisputeVerdictEntry,
    "slash": SlashEntry,
    "reward": RewardEntry,
    "reputation": ReputationEntry,
    "state": StateEntry,
    "beacon": BeaconEntry,
    "namespace": NamespaceEntry,
}


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
