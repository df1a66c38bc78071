"""The entries that move money (docs/ledger.md, "Entries" and "Authority").

``deposit``, ``stake``, ``unstake`` and ``fee`` move an account's money and carry its signed
request (:class:`~veriml.ledger.entries.base.SignedEntry`); ``slash``, ``reward`` and
``reputation`` are the settlement of a verdict (docs/ledger.md, "Settlement"), which the fold
accepts only as :func:`~veriml.ledger.settlement.settle` derives them. Pure: no I/O.
"""

# member() returns a dataclasses.field, which ruff cannot see through:
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass

from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.ledger.entries.base import (
    BaseEntry,
    SignedEntry,
    check_amount,
    check_id,
    check_signed_amount,
    check_text,
    check_time,
    member,
    signed_request,
)

__all__ = [
    "DepositEntry",
    "FeeEntry",
    "ReputationEntry",
    "RewardEntry",
    "SlashEntry",
    "StakeEntry",
    "UnstakeEntry",
]


@dataclass(frozen=True, slots=True)
class DepositEntry(SignedEntry):
    """Money enters the ledger: ``amount`` is minted into ``account``'s balance. The
    ``authorization`` is a ``deposit`` request signed by the ledger's admin account (the
    rules' ``admin``, checked by the fold) naming this account, amount and memo."""

    TYPE = "deposit"
    OP = "deposit"
    AUTHORIZES = (
        ("to", "account"),
        ("amount", "amount"),
        ("memo", "memo"),
    )

    account: str = member(check_id)
    amount: int = member(check_amount)
    at: str = member(check_time)
    memo: str = member(check_text, default="")
    authorization: Envelope | None = signed_request()


@dataclass(frozen=True, slots=True)
class StakeEntry(SignedEntry):
    """``amount`` moves from ``account``'s balance into its stake (slashable); the
    ``authorization`` is the account's own signed ``stake`` request for that amount."""

    TYPE = "stake"
    OP = "stake"
    AUTHORIZES = (
        ("account", "account"),
        ("amount", "amount"),
    )

    account: str = member(check_id)
    amount: int = member(check_amount)
    at: str = member(check_time)
    authorization: Envelope | None = signed_request()


@dataclass(frozen=True, slots=True)
class UnstakeEntry(SignedEntry):
    """``amount`` of stake starts unbonding: still slashable until ``available_at``, then
    back in the balance (released by the first entry folded at or after that time)."""

    TYPE = "unstake"
    OP = "unstake"
    AUTHORIZES = StakeEntry.AUTHORIZES

    account: str = member(check_id)
    amount: int = member(check_amount)
    at: str = member(check_time)
    available_at: str = member(check_time)
    authorization: Envelope | None = signed_request()

    def _check(self) -> None:
        if self.available_at < self.at:
            raise FormatError(
                "unstake available_at is before the entry's own time",
                at=self.at,
                available_at=self.available_at,
            )
        self._authorize()


@dataclass(frozen=True, slots=True)
class FeeEntry(SignedEntry):
    """``payer`` pays ``payee`` for one answered inference (request id ``inference``). The
    ``authorization`` is the payer's signed ``payment`` request for that request id; the fold
    keeps the fees paid under it within its amount."""

    TYPE = "fee"
    OP = "payment"
    AUTHORIZES = (
        ("account", "payer"),
        ("request", "inference"),
    )

    payer: str = member(check_id)
    payee: str = member(check_id)
    amount: int = member(check_amount)
    inference: str = member(check_id)
    at: str = member(check_time)
    authorization: Envelope | None = signed_request()


@dataclass(frozen=True, slots=True)
class SlashEntry(BaseEntry):
    """``amount`` is taken from ``account``'s stake (then its unbonding, newest first) for
    losing ``dispute``: ``burned`` is destroyed, the rest held to reward that dispute's winner."""

    TYPE = "slash"

    account: str = member(check_id)
    amount: int = member(check_amount)
    burned: int = member(check_amount)
    dispute: str = member(check_id)
    at: str = member(check_time)

    def _check(self) -> None:
        if self.burned > self.amount:
            raise FormatError(
                "slash burns more than it takes", amount=self.amount, burned=self.burned
            )


@dataclass(frozen=True, slots=True)
class RewardEntry(BaseEntry):
    """``amount`` is paid to ``account``: out of ``dispute``'s held slash, or minted when the
    reward belongs to no dispute. ``dispute`` is omitted from the JSON when ``None``."""

    TYPE = "reward"

    account: str = member(check_id)
    amount: int = member(check_amount)
    reason: str = member(check_id)
    at: str = member(check_time)
    dispute: str | None = member(check_id, absent="omit", default=None)


@dataclass(frozen=True, slots=True)
class ReputationEntry(BaseEntry):
    """``account``'s reputation changes by ``delta`` (signed), for ``reason`` (and
    ``dispute``, omitted from the JSON when ``None``)."""

    TYPE = "reputation"

    account: str = member(check_id)
    delta: int = member(check_signed_amount)
    reason: str = member(check_id)
    at: str = member(check_time)
    dispute: str | None = member(check_id, absent="omit", default=None)
