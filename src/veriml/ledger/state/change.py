"""One entry's effect on the ledger state, computed before the state takes it (docs/ledger.md,
"The fold"): what an entry's rule (:mod:`~veriml.ledger.state.money`,
:mod:`~veriml.ledger.state.disputes`, :mod:`~veriml.ledger.state.network`) reads and changes.
Pure: no I/O."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.timestamps import parse_time
from veriml.ledger.entries import (
    AMOUNT_LIMIT,
    LedgerEntry,
)
from veriml.ledger.entries.base import SignedEntry
from veriml.ledger.rules import Rules
from veriml.ledger.state.records import Account, LedgerError, OpenDispute
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.draw import Draw

if TYPE_CHECKING:
    from veriml.ledger.state.fold import LedgerState

__all__ = ["REQUEST_SKEW", "REVEAL_LAG", "Change", "Epoch", "Paying", "PendingDraw"]

REQUEST_SKEW = dt.timedelta(minutes=10)
"""How far a signed request's ``issued_at`` may be from the ``at`` of the entry carrying it."""
REVEAL_LAG = 2
"""Epoch ``e``'s beacon entry reveals the key of epoch ``e - REVEAL_LAG``."""


@dataclass(frozen=True, slots=True)
class Paying:
    """The latest inference entry, for the fees that must follow it at once: its request id,
    its receipts by the node each names, and the payees paid so far."""

    request: str
    receipts: Mapping[str, tuple[Envelope, ...]]
    paid: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Epoch:
    commitment: Digest
    index: int
    """The log index of the ``beacon`` entry that began the epoch."""
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class PendingDraw:
    """An inference whose draw secret is checked once its epoch's key is revealed."""

    index: int
    request_id: str
    draw: Draw

    def check(self, key: bytes, change: Change) -> None:
        if not self.draw.matches(key, self.request_id):
            raise change.fail(
                "an inference's draw secret does not follow from its epoch's key",
                inference=self.request_id,
                inference_index=self.index,
                epoch=self.draw.epoch,
            )


class Change:
    """One entry's effect, computed on copies of what it touches. The state takes it only
    when the whole entry checked out, so a refused entry changes nothing."""

    __slots__ = (
        "accounts",
        "claims",
        "closed",
        "draws",
        "due",
        "epoch",
        "expect",
        "held",
        "index",
        "kind",
        "namespaces",
        "node_keys",
        "opened",
        "operators",
        "paying",
        "pushes",
        "rules",
        "spent",
        "state",
        "state_ref",
        "totals",
        "used",
    )

    def __init__(self, state: LedgerState, index: int, kind: str) -> None:
        self.state = state
        self.index = index
        self.kind = kind
        self.totals = state._totals.copy()
        self.accounts: dict[str, Account] = {}
        self.held: dict[str, int] = {}
        self.opened: dict[str, OpenDispute] = {}
        self.closed: list[str] = []
        self.due: list[tuple[str, str]] = []
        self.pushes: list[tuple[str, str]] = []
        self.used: list[Digest] = []
        self.spent: dict[Digest, int] = {}
        self.claims: list[Digest] = []
        self.namespaces: dict[str, str] = {}
        self.operators: dict[str, str] = {}
        self.node_keys: dict[str, str] = {}
        self.paying: Paying | None = None
        self.rules: Rules | None = None
        self.state_ref: tuple[int, str] | None = None
        self.epoch: tuple[int, Epoch, bytes | None] | None = None
        self.expect: list[LedgerEntry] | None = None
        self.draws: list[tuple[int, PendingDraw]] = []

    def account(self, account_id: str) -> Account:
        found = self.accounts.get(account_id)
        if found is None:
            live = self.state._accounts.get(account_id)
            found = Account() if live is None else live.copy()
            self.accounts[account_id] = found
        return found

    def held_of(self, dispute: str) -> int:
        if dispute in self.held:
            return self.held[dispute]
        return self.state._held.get(dispute, 0)

    def known(self, dispute: str) -> bool:
        return dispute in self.state._known_disputes or dispute in self.opened

    def operator_of(self, node: str) -> str:
        """The account that bonds ``node`` (its operator), or ``node`` itself when no node
        entry bound it (an account challenging in its own name)."""
        return self.operators.get(node) or self.state._operators.get(node) or node

    def rules_or_fail(self) -> Rules:
        rules = self.state._rules
        if rules is None:
            raise self.fail("no rules are logged yet (a state entry comes first)")
        return rules

    def fail(self, message: str, **evidence: Any) -> LedgerError:
        return LedgerError(message, index=self.index, type=self.kind, **evidence)

    def authorised(self, entry: SignedEntry, request: LedgerRequest) -> None:
        """``entry``'s signed ``request`` is used once, and within :data:`REQUEST_SKEW` of
        the entry."""
        assert entry.authorization is not None  # the caller opened its request
        digest = Digest.of(entry.authorization.payload)
        if digest in self.state._used or digest in self.used:
            raise self.fail("this signed request was already used", request=digest)
        self.used.append(digest)
        self.near(request.issued_at, entry.at)

    def debit(self, account_id: str, amount: int, message: str) -> Account:
        """Take ``amount`` from ``account_id``'s balance, which must hold it (else ``message``)."""
        account = self.account(account_id)
        if account.balance < amount:
            raise self.fail(message, account=account_id, balance=account.balance, amount=amount)
        account.balance -= amount
        return account

    def near(self, issued_at: str, at: str) -> None:
        skew = abs(parse_time(issued_at) - parse_time(at))
        if skew > REQUEST_SKEW:
            raise self.fail(
                "the signed request is too far from its entry's time",
                issued_at=issued_at,
                at=at,
            )

    def check_range(self) -> None:
        """Keep every number the state writes within what RFC 8785 can write exactly.

        Balances, stakes and held amounts never exceed ``minted``; ``fees`` and the other
        running totals and reputations can, so they are checked themselves."""
        for name, value in self.totals.to_json().items():
            if value >= AMOUNT_LIMIT:
                raise self.fail("a ledger total would leave the integer range", total=name)
        for account_id, account in self.accounts.items():
            if abs(account.reputation) >= AMOUNT_LIMIT or account.slashed >= AMOUNT_LIMIT:
                raise self.fail("an account would leave the integer range", account=account_id)

    def release(self, account_id: str, clock: str) -> None:
        """Return ``account_id``'s unbonding due by ``clock`` to its balance."""
        account = self.account(account_id)
        kept = [u for u in account.unbonding if u.available_at > clock]
        released = account.unbonding_total - sum(u.amount for u in kept)
        account.unbonding = kept
        account.balance += released
        self.totals.staked -= released
