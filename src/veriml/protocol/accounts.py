"""What an account signs: operator bindings and ledger requests (docs/ledger.md, "Authority").

An **account** is a key: its id is the key id (``sha256:`` of the DER SubjectPublicKeyInfo),
Ed25519 or EC. Two messages carry an account's own signature into the log, so an auditor
needs nobody's word for them:

- :class:`OperatorBinding` (``application/vnd.veriml.operator-binding+json``): an operator
  account says "this node is mine". A node's descriptor carries its binding; quorums,
  spot checks and prefill checks count **operators**, and an operator's nodes share its stake;
- :class:`LedgerRequest` (``application/vnd.veriml.ledger-request+json``): an account
  authorises one move of its own money: ``stake``, ``unstake``, ``payment`` (fees for one
  request, up to an amount), ``challenge`` (the bond of one dispute), or, for the ledger's
  admin account, ``deposit`` (minting into another account). The ledger entry that carries
  the move embeds the signed request; the fold checks signer, members and that no request is
  used twice (``nonce``).

Every ``open`` checks, in order: (1) the payload type, (2) the signature by the key the
payload carries, (3) the members, (4) the bindings the caller asks for (``node=``,
``account=``). Failures raise :class:`VerificationError` naming the ``check``; malformed members
raise :class:`FormatError`. Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from veriml.core.canonical import canonicalize, parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Check, FormatError, KeyFileError, SignatureError, VerificationError
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.timestamps import format_time, parse_time

__all__ = [
    "LEDGER_OPS",
    "LEDGER_REQUEST_TYPE",
    "OPERATOR_BINDING_TYPE",
    "LedgerRequest",
    "OperatorBinding",
    "account_key",
]

OPERATOR_BINDING_TYPE: Final = "application/vnd.veriml.operator-binding+json"
LEDGER_REQUEST_TYPE: Final = "application/vnd.veriml.ledger-request+json"
LEDGER_OPS: Final = ("stake", "unstake", "deposit", "payment", "challenge")
_MAX_PAYLOAD: Final = 16 * 1024
_MAX_PEM: Final = 4096
_AMOUNT_LIMIT: Final = 1 << 53
_NONCE = re.compile(r"[0-9a-f]{32}")
# The members each op carries beyond type, op, account, public_key, amount, nonce, issued_at.
_OP_MEMBERS: Final[Mapping[str, tuple[str, ...]]] = {
    "stake": (),
    "unstake": (),
    "deposit": ("to", "memo"),
    "payment": ("request",),
    "challenge": ("inference", "node"),
}
_COMMON: Final = ("type", "op", "account", "public_key", "amount", "nonce", "issued_at")


def account_key(public_key: str) -> VerifyingKey:
    """An account's public key from its PEM text; :class:`FormatError` when it is not one."""
    if not isinstance(public_key, str) or not 0 < len(public_key) <= _MAX_PEM:
        raise FormatError("an account key is a PEM public key")
    return _account_key(public_key)


@functools.lru_cache(maxsize=4096)
def _account_key(public_key: str) -> VerifyingKey:
    """:func:`account_key` of a checked string, parsed once per key (a client meets the same
    few operators in every answer); a failure is raised each time, never cached."""
    if not public_key.isascii():  # no PEM; a lone surrogate (JSON escapes one) cannot encode
        raise FormatError("an account key is a PEM public key", reason="not ASCII")
    try:
        return VerifyingKey.from_pem(public_key.encode())
    except KeyFileError as exc:
        raise FormatError("an account key is a PEM public key", reason=exc.message) from exc


def _text(obj: Mapping[str, Any], name: str, *, limit: int = 256, empty: bool = False) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or len(value) > limit or (not value and not empty):
        raise FormatError(f"member {name!r} must be a string of at most {limit} characters")
    return value


def _time(obj: Mapping[str, Any], name: str) -> str:
    value = _text(obj, name, limit=64)
    if format_time(parse_time(value, what=name)) != value:
        raise FormatError(f"{name} must be written YYYY-MM-DDTHH:MM:SS.ffffffZ", got=value)
    return value


def _open(envelope: Envelope, payload_type: str, what: str) -> tuple[VerifyingKey, dict[str, Any]]:
    """Steps 1 and 2: the payload type, and the signature by the key the payload names."""
    if envelope.payload_type != payload_type:
        raise VerificationError(
            f"not a {what}", check=what, expected=payload_type, got=envelope.payload_type[:80]
        )
    if len(envelope.payload) > _MAX_PAYLOAD:
        raise FormatError(f"{what} is too large", size=len(envelope.payload))
    payload = parse_json_object(envelope.payload, what=what)
    key = account_key(payload.get("public_key"))  # type: ignore[arg-type]
    try:
        envelope.verify([key])
    except SignatureError as exc:
        raise SignatureError(
            f"{what} is not signed by the key it names", check=what, account=key.key_id
        ) from exc
    if payload.get("account", payload.get("operator")) != key.key_id:
        raise VerificationError(
            f"{what} names another account than its signer",
            check=what,
            signer=key.key_id,
        )
    return key, payload


@dataclass(frozen=True, slots=True)
class OperatorBinding:
    """An operator account binds one node to itself (signed by the operator's key).

    >>> operator, node = generate_key(), generate_key()  # doctest: +SKIP
    >>> envelope = OperatorBinding.of(operator, node.key_id).sign(operator)  # doctest: +SKIP
    >>> OperatorBinding.open(envelope, node=node.key_id).operator == operator.key_id  # +SKIP
    """

    public_key: str
    node: str
    issued_at: str

    @classmethod
    def of(
        cls, operator: SigningKey, node: str, *, issued_at: str | None = None
    ) -> OperatorBinding:
        from veriml.core.timestamps import utc_now

        return cls(operator.public.to_pem().decode(), node, issued_at or utc_now())

    @property
    def key(self) -> VerifyingKey:
        return account_key(self.public_key)

    @property
    def operator(self) -> str:
        """The operator's account id (its key id)."""
        return self.key.key_id

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "operator-binding",
            "operator": self.operator,
            "public_key": self.public_key,
            "node": self.node,
            "issued_at": self.issued_at,
        }

    def sign(self, operator: SigningKey) -> Envelope:
        if operator.key_id != self.operator:
            raise KeyFileError("a binding is signed by the operator's own key")
        return Envelope.sign(
            canonicalize(self.to_json()), [operator], payload_type=OPERATOR_BINDING_TYPE
        )

    @classmethod
    def open(
        cls, envelope: Envelope, *, node: str | None = None, operator: str | None = None
    ) -> OperatorBinding:
        """Check a binding (steps in the module docstring); ``node`` and ``operator``, when
        given, must be the ones it binds (``check="operator-binding"``)."""
        key, payload = _open(envelope, OPERATOR_BINDING_TYPE, "operator-binding")
        unknown = sorted(set(payload) - {"type", "operator", "public_key", "node", "issued_at"})
        if payload.get("type") != "operator-binding" or unknown:
            raise FormatError("malformed operator binding", unknown=",".join(unknown)[:200])
        binding = cls(
            public_key=str(payload["public_key"]),
            node=_text(payload, "node"),
            issued_at=_time(payload, "issued_at"),
        )
        for what, wanted, got in (("node", node, binding.node), ("operator", operator, key.key_id)):
            if wanted is not None and wanted != got:
                raise VerificationError(
                    f"the operator binding is for another {what}",
                    check=Check.OPERATOR_BINDING,
                    expected=wanted,
                    got=got,
                )
        return binding


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerRequest:
    """One move of an account's money, signed by the account (module docstring).

    ``amount`` is what moves (``payment``: the most the payer allows for the request's fees,
    ``challenge``: the bond). ``to``/``memo`` belong to ``deposit``, ``request`` to
    ``payment``, ``inference``/``node`` to ``challenge``. ``nonce`` makes each request
    single-use: the fold refuses a request it has folded before.
    """

    op: str
    public_key: str
    amount: int
    issued_at: str
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))
    to: str | None = None
    memo: str | None = None
    request: str | None = None
    inference: str | None = None
    node: str | None = None

    def __post_init__(self) -> None:
        if self.op not in LEDGER_OPS:
            raise FormatError("unknown ledger request op", got=str(self.op)[:40])
        amount = self.amount
        if type(amount) is not int or not 0 <= amount < _AMOUNT_LIMIT:
            raise FormatError("a ledger request amount is an integer in [0, 2^53)")
        if not _NONCE.fullmatch(self.nonce):
            raise FormatError("a ledger request nonce is 32 lowercase hex digits")
        wanted = set(_OP_MEMBERS[self.op])
        for name in ("to", "memo", "request", "inference", "node"):
            value = getattr(self, name)
            if (value is not None) != (name in wanted):
                raise FormatError(
                    f"a {self.op} request {'needs' if name in wanted else 'has no'} {name!r}"
                )
            if value is not None and (
                not isinstance(value, str) or len(value) > 256 or (not value and name != "memo")
            ):
                raise FormatError(f"ledger request member {name!r} is 1-256 characters")

    @classmethod
    def signed(
        cls,
        key: SigningKey,
        op: str,
        amount: int,
        *,
        issued_at: str | None = None,
        **members: str,
    ) -> Envelope:
        """Build and sign a request with ``key`` (the account): the envelope to send."""
        from veriml.core.timestamps import utc_now

        request = cls(
            op=op,
            public_key=key.public.to_pem().decode(),
            amount=amount,
            issued_at=issued_at or utc_now(),
            **members,
        )
        return request.sign(key)

    @property
    def key(self) -> VerifyingKey:
        return account_key(self.public_key)

    @property
    def account(self) -> str:
        """The signing account (its key id): whose money moves."""
        return self.key.key_id

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "ledger-request",
            "op": self.op,
            "account": self.account,
            "public_key": self.public_key,
            "amount": self.amount,
            "nonce": self.nonce,
            "issued_at": self.issued_at,
        }
        for name in _OP_MEMBERS[self.op]:
            out[name] = getattr(self, name)
        return out

    def sign(self, key: SigningKey) -> Envelope:
        if key.key_id != self.account:
            raise KeyFileError("a ledger request is signed by the account's own key")
        return Envelope.sign(canonicalize(self.to_json()), [key], payload_type=LEDGER_REQUEST_TYPE)

    @classmethod
    def open(
        cls, envelope: Envelope, *, op: str | None = None, account: str | None = None
    ) -> LedgerRequest:
        """Check a signed ledger request; ``op`` and ``account``, when given, must be its own
        (``check="ledger-request"``)."""
        key, payload = _open(envelope, LEDGER_REQUEST_TYPE, "ledger-request")
        kind = payload.get("op")
        if payload.get("type") != "ledger-request" or kind not in LEDGER_OPS:
            raise FormatError("malformed ledger request", op=str(kind)[:40])
        expected = {*_COMMON, *_OP_MEMBERS[str(kind)]}
        if set(payload) != expected:
            raise FormatError(
                "a ledger request has exactly its op's members",
                missing=",".join(sorted(expected - set(payload))) or None,
                unknown=",".join(sorted(set(payload) - expected))[:200] or None,
            )
        extra = {name: payload[name] for name in _OP_MEMBERS[str(kind)]}
        request = cls(
            op=str(kind),
            public_key=str(payload["public_key"]),
            amount=payload["amount"],
            nonce=_text(payload, "nonce", limit=32),
            issued_at=_time(payload, "issued_at"),
            **extra,
        )
        for what, wanted, got in (("op", op, request.op), ("account", account, key.key_id)):
            if wanted is not None and wanted != got:
                raise VerificationError(
                    f"the ledger request is for another {what}",
                    check=Check.LEDGER_REQUEST,
                    expected=wanted,
                    got=got,
                )
        return request

    @staticmethod
    def digest_of(envelope: Envelope) -> Digest:
        """What makes a request single-use: SHA-256 of its signed payload."""
        return Digest.of(envelope.payload)
