"""What every log entry type is built from (docs/ledger.md, "Entries").

An entry type is a frozen dataclass whose fields declare their JSON members: a field made with
:func:`member` carries a :class:`Member` (the check of its value, and how the value is written
to and read from JSON). :class:`BaseEntry` builds, from those declarations, the checks run when
an entry is built, ``to_json``, ``to_bytes`` and ``from_json``; an entry type adds only the rules
that tie one member to another (:meth:`BaseEntry._check`).

The member checks below are the "Member rules" of docs/ledger.md: integer amounts in
[0, 2**53), one spelling of every timestamp, ids of 1-256 characters, exactly the documented
members, so an entry's bytes are a function of its value. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, SignatureError, VerificationError
from veriml.core.timestamps import format_time, parse_time
from veriml.protocol.accounts import LedgerRequest
from veriml.tlog.tiles import MAX_ENTRY_SIZE

__all__ = [
    "AMOUNT_LIMIT",
    "MAX_ENTRY_BYTES",
    "BaseEntry",
    "Check",
    "Member",
    "SignedEntry",
    "check_amount",
    "check_digest",
    "check_id",
    "check_members",
    "check_signed_amount",
    "check_text",
    "check_time",
    "digest_map",
    "digest_texts",
    "load_envelope",
    "member",
    "one_of",
    "signed_request",
]

MAX_ENTRY_BYTES = MAX_ENTRY_SIZE
"""The log's own limit: a tile entry bundle's uint16 length prefix."""

AMOUNT_LIMIT = 1 << 53
"""Amounts are integers in [0, 2**53): the integers RFC 8785 can write (it writes numbers as
IEEE 754 doubles; I-JSON, RFC 7493 section 2.2), so every entry and every folded state has a
canonical form, and every implementation of the fold reads them exactly."""

_MAX_TEXT = 256

Check = Callable[[str, str, Any], Any]
"""A member check: ``(entry type, member label, value) -> the value as the entry keeps it``,
or a :class:`FormatError` naming the entry type and the member."""


# -- member checks (docs/ledger.md, "Entries": member rules) ----------------------------------


def check_amount(kind: str, label: str, value: object, *, signed: bool = False) -> int:
    """An amount: an integer in [0, 2**53) (``signed``: in (-2**53, 2**53))."""
    # type() rather than isinstance(): bool is an int subclass, and True is not an amount.
    if type(value) is not int:
        raise FormatError(f"{kind} {label} must be an integer", got=type(value).__name__)
    low = -AMOUNT_LIMIT + 1 if signed else 0
    if not low <= value < AMOUNT_LIMIT:
        raise FormatError(f"{kind} {label} is out of range", got=str(value)[:40])
    return value


def check_signed_amount(kind: str, label: str, value: object) -> int:
    """A signed amount (a reputation ``delta``)."""
    return check_amount(kind, label, value, signed=True)


def check_id(kind: str, label: str, value: object) -> str:
    """An id (an account, a dispute, a request, a reason): a string of 1-256 characters."""
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT:
        raise FormatError(
            f"{kind} {label} must be an account id of 1-{_MAX_TEXT} characters",
            got=str(value)[:80],
        )
    return value


def check_text(kind: str, label: str, value: object) -> str:
    """Free text (a ``memo``): a string of at most 256 characters, possibly empty."""
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise FormatError(f"{kind} {label} must be a string of at most {_MAX_TEXT} characters")
    return value


def check_time(kind: str, label: str, value: object) -> str:
    """A timestamp in the one spelling :func:`format_time` writes: each instant has exactly
    one text, so entries and folded states have one byte form, and texts compare in time
    order."""
    when = parse_time(value, what=f"{kind} {label}")
    if format_time(when) != value:
        raise FormatError(
            f"{kind} {label} must be written YYYY-MM-DDTHH:MM:SS.ffffffZ", got=str(value)[:40]
        )
    return str(value)


def one_of(*choices: str) -> Check:
    """The check that a value is one of ``choices``."""

    def check(kind: str, label: str, value: object) -> str:
        if value not in choices:
            raise FormatError(
                f"{kind} {label} must be one of {', '.join(choices)}", got=str(value)[:40]
            )
        return str(value)

    return check


def check_digest(kind: str, label: str, value: object) -> Digest:
    """A digest, given as a :class:`Digest` or as its ``sha256:<hex>`` text."""
    if isinstance(value, Digest):
        return value
    if not isinstance(value, str):
        raise FormatError(f"{kind} {label} must be a sha256:<hex> digest")
    return Digest.from_text(value)


def digest_map(*names: str) -> Check:
    """The check of a ``{name: digest}`` object whose names are ids, or one of ``names``."""
    check_name = one_of(*names) if names else check_id

    def check(kind: str, label: str, value: object) -> dict[str, Digest]:
        if not isinstance(value, Mapping):
            raise FormatError(f"{kind} {label} must be an object of digests")
        out: dict[str, Digest] = {}
        for name, item in value.items():
            check_name(kind, f"{label} name", name)
            out[name] = check_digest(kind, f"{label}[{name}]", item)
        return out

    return check


def digest_texts(digests: Mapping[str, Digest]) -> dict[str, str]:
    """A ``{name: digest}`` map as JSON: digests as text, names sorted."""
    return {name: d.to_text() for name, d in sorted(digests.items())}


def load_envelope(label: str, value: object) -> Envelope:
    """A DSSE envelope read from an entry's JSON member ``label``."""
    if not isinstance(value, Mapping):
        raise FormatError(f"{label} must be a DSSE envelope")
    return Envelope.from_json(value)


# -- declared members -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Member:
    """How one dataclass field is an entry's JSON member.

    ``check`` checks (and may convert) the value when the entry is built; ``label`` names the
    member in its messages (default: the field's name). ``dump`` writes the value as JSON and
    ``load`` reads it back (``(member name, JSON value) -> constructor argument``); both
    default to the value itself. ``absent`` says what ``None`` is: not allowed (``None``, the
    check sees it), a member omitted from the JSON (``"omit"``, and a JSON ``null`` is
    refused), or a JSON ``null`` (``"null"``).
    """

    check: Check | None = None
    label: str | None = None
    dump: Callable[[Any], Any] | None = None
    load: Callable[[str, Any], Any] | None = None
    absent: Literal["omit", "null"] | None = None


def member(
    check: Check | None = None,
    *,
    label: str | None = None,
    dump: Callable[[Any], Any] | None = None,
    load: Callable[[str, Any], Any] | None = None,
    absent: Literal["omit", "null"] | None = None,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field declaring its JSON member (see :class:`Member`)."""
    declared = Member(check, label, dump, load, absent)
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata={"member": declared}
    )


_DECLARED: dict[type, tuple[tuple[str, Member], ...]] = {}


def _declared(cls: type) -> tuple[tuple[str, Member], ...]:
    """The declared members of an entry type, in field order (read once per type)."""
    declared = _DECLARED.get(cls)
    if declared is None:
        fields = dataclasses.fields(cls)
        declared = tuple((f.name, f.metadata["member"]) for f in fields if "member" in f.metadata)
        _DECLARED[cls] = declared
    return declared


class BaseEntry:
    """A log entry: an RFC 8785 JSON object with a ``type`` (:attr:`TYPE`) and exactly the
    members its fields declare (:func:`member`), at most :data:`MAX_ENTRY_BYTES` long.

    Subclasses are frozen dataclasses. Building one runs every member's check, then
    :meth:`_check`; :meth:`to_json` writes the declared members, :meth:`from_json` refuses a
    missing or unknown member (and a ``null`` for an omitted one) and builds the entry, which
    checks it again. Types whose JSON is not one member a field (``model``, ``inference``)
    write and read it themselves, with the same checks.
    """

    __slots__ = ()

    TYPE: ClassVar[str]
    """The entry's ``type`` member."""

    def __post_init__(self) -> None:
        for name, declared in _declared(type(self)):
            value = getattr(self, name)
            if declared.check is None or (value is None and declared.absent is not None):
                continue
            checked = declared.check(self.TYPE, declared.label or name, value)
            if checked is not value:
                object.__setattr__(self, name, checked)
        self._check()

    def _check(self) -> None:
        """The rules that tie members together, checked once each member is checked."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for name, declared in _declared(type(self)):
            value = getattr(self, name)
            if value is None:
                if declared.absent != "omit":
                    out[name] = None
            else:
                out[name] = value if declared.dump is None else declared.dump(value)
        return out

    def to_bytes(self) -> bytes:
        """The entry's logged bytes: its RFC 8785 JSON."""
        data = canonicalize(self.to_json())
        if len(data) > MAX_ENTRY_BYTES:
            raise FormatError("log entry is too large", size=len(data), limit=MAX_ENTRY_BYTES)
        return data

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Self:
        return cls._parse(obj)

    @classmethod
    def _parse(cls, obj: Mapping[str, Any], *, derived: tuple[str, ...] = ()) -> Self:
        """The entry ``obj`` is, once it has exactly the declared members (and the
        ``derived`` ones, written by :meth:`to_json` from the others)."""
        declared = _declared(cls)
        required = tuple(name for name, d in declared if d.absent != "omit") + derived
        optional = tuple(name for name, d in declared if d.absent == "omit")
        check_members(obj, cls.TYPE, required, optional)
        arguments = {
            name: obj[name] if d.load is None else d.load(name, obj[name])
            for name, d in declared
            if name in obj
        }
        return cls(**arguments)


def check_members(
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


# -- entries that move an account's money -----------------------------------------------------


class SignedEntry(BaseEntry):
    """An entry that moves an account's money and carries that account's signed request
    (``authorization``, docs/ledger.md, "Authority"): a DSSE envelope whose ledger request is
    for :attr:`OP` and whose members are the entry's own (:attr:`AUTHORIZES` maps request
    members to the entry's attributes). A request that does not open, or is for anything
    else, is a :class:`FormatError`: such an entry can be neither built nor parsed."""

    __slots__ = ()

    OP: ClassVar[str]
    AUTHORIZES: ClassVar[tuple[tuple[str, str], ...]]
    at: str
    authorization: Envelope | None

    @property
    def request(self) -> LedgerRequest:
        """The signed ledger request the entry carries."""
        if self.authorization is None:
            raise FormatError(f"a {self.TYPE} entry without authorization carries no request")
        return LedgerRequest.open(self.authorization)

    def _check(self) -> None:
        self._authorize()

    def _authorize(self) -> None:
        if not isinstance(self.authorization, Envelope):
            raise FormatError(
                f"a {self.TYPE} entry carries its account's signed request (authorization)"
            )
        try:
            request = LedgerRequest.open(self.authorization)
        except (VerificationError, SignatureError) as exc:
            raise FormatError(
                f"{self.TYPE} authorization does not verify", reason=exc.diagnostics()[:300]
            ) from exc
        expected = [("op", self.OP)] + [(n, getattr(self, a)) for n, a in self.AUTHORIZES]
        for name, wanted in expected:
            got = getattr(request, name)
            if got != wanted:
                raise FormatError(
                    f"{self.TYPE} authorization is for another {name}",
                    expected=str(wanted)[:80],
                    got=str(got)[:80],
                )


def signed_request(*, absent: Literal["omit"] | None = None) -> Any:
    """The ``authorization`` field of a :class:`SignedEntry`."""
    return member(dump=Envelope.to_json, load=load_envelope, absent=absent, default=None)
