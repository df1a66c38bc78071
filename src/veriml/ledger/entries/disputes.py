"""The entries of a dispute (docs/ledger.md, "Entries"; the protocol: docs/verification.md,
"Disputes").

A ``challenge`` opens a dispute about one node's receipt, a ``verdict`` closes it; the
settlement that follows a verdict (``slash``, ``reward``, ``reputation``) moves money and lives
with the other money entries (:mod:`veriml.ledger.entries.money`). Pure: no I/O.
"""

# member() returns a dataclasses.field, which ruff cannot see through:
# ruff: noqa: RUF009

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.ledger.entries.base import (
    BaseEntry,
    SignedEntry,
    check_amount,
    check_digest,
    check_id,
    check_time,
    digest_map,
    digest_texts,
    member,
    one_of,
    signed_request,
)

__all__ = [
    "MODES",
    "REASONS",
    "WINNERS",
    "ChallengeEntry",
    "DisputeVerdictEntry",
    "Reason",
    "Winner",
]

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
_MAX_DEADLINE = 10**9


def _trace(kind: str, label: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping) or set(value) != {"root", "size"}:
        raise FormatError(f"{kind} {label} must be a trace commitment {{root, size}}")
    root = check_digest(kind, f"{label} root", value["root"]).to_text()
    return {"root": root, "size": check_amount(kind, f"{label} size", value["size"])}


def _statement(kind: str, label: str, value: object) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FormatError(f"{kind} {label} must be a DSSE envelope")
    return Envelope.from_json(value).to_json()


def _outputs(kind: str, label: str, value: object) -> dict[str, str]:
    return digest_texts(digest_map()(kind, label, value))


def _receipt(kind: str, label: str, value: object) -> str:
    return check_digest(kind, label, value).to_text()


_PARTY_MEMBERS = {
    "node": check_id,
    "account": check_id,
    "receipt": _receipt,
    "trace": _trace,
    "statement": _statement,
    "outputs": _outputs,
}


def _party(required: tuple[str, ...], optional: tuple[str, ...]) -> Any:
    """The check of a dispute party: kept as plain JSON (digests as text), checked member by
    member."""

    def check(kind: str, label: str, value: object) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise FormatError(f"{kind} {label} must be an object")
        present = set(value)
        missing = [m for m in required if m not in present]
        unknown = sorted(present - set(required) - set(optional))
        if missing or unknown:
            raise FormatError(
                f"{kind} {label} has the wrong members",
                missing=",".join(missing) or None,
                unknown=",".join(unknown)[:200] or None,
            )
        return {
            name: _PARTY_MEMBERS[name](kind, f"{label} {name}", value[name])
            for name in sorted(present)
        }

    return check


def _deadline(kind: str, label: str, value: object) -> float:
    if (
        type(value) not in (int, float)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or not 0 < value <= _MAX_DEADLINE  # type: ignore[operator]
    ):
        raise FormatError(
            f"{kind} {label} must be a positive number of seconds", got=str(value)[:40]
        )
    return value  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class ChallengeEntry(SignedEntry):
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

    TYPE = "challenge"
    OP = "challenge"
    AUTHORIZES = (
        ("account", "challenger_account"),
        ("amount", "bond"),
        ("inference", "inference"),
        ("node", "defendant_node"),
    )

    dispute: str = member(check_id)
    inference: str = member(check_id)
    defendant: Mapping[str, Any] = member(
        _party(("node", "receipt", "trace"), ("statement",)), dump=dict
    )
    challenger: Mapping[str, Any] = member(
        _party(("account", "trace", "outputs"), ("node", "statement")), dump=dict
    )
    mode: str = member(one_of(*MODES))
    bond: int = member(check_amount)
    deadline_seconds: float = member(_deadline)
    at: str = member(check_time)
    authorization: Envelope | None = signed_request(absent="omit")

    def _check(self) -> None:
        if self.bond > 0 or self.authorization is not None:
            self._authorize()

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


@dataclass(frozen=True, slots=True)
class DisputeVerdictEntry(BaseEntry):
    """A dispute closes (type ``verdict``): who won, why, and the evidence the referee used.

    ``node_index``/``op_type`` name the operator the bisection ended on (``None`` when the
    dispute ended before the referee: timeout, inconsistency, invalid proof, no difference);
    ``inputs`` are its agreed input digests, ``claims`` the parties' output digests
    (``defendant``/``challenger``), ``referee`` the referee's own output digests.
    """

    TYPE = "verdict"

    dispute: str = member(check_id)
    winner: Winner = member(one_of(*WINNERS))
    reason: Reason = member(one_of(*REASONS))
    at: str = member(check_time)
    node_index: int | None = member(check_amount, absent="null", default=None)
    op_type: str | None = member(check_id, absent="null", default=None)
    inputs: Mapping[str, Digest] = member(digest_map(), dump=digest_texts, default_factory=dict)
    claims: Mapping[str, Digest] = member(
        digest_map("defendant", "challenger"), dump=digest_texts, default_factory=dict
    )
    referee: Mapping[str, Digest] = member(digest_map(), dump=digest_texts, default_factory=dict)
    rounds: int = member(check_amount, default=0)
    messages: int = member(check_amount, default=0)

    @property
    def challenger_lost(self) -> bool:
        """Whether the challenger's bond is forfeit: the defendant won, or both were wrong."""
        return self.winner in ("defendant", "neither")
