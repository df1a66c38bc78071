"""The ledger state: a deterministic fold over the log's entries (docs/ledger.md).

Pure code, no I/O, integer amounts, times taken from the entries only: the coordinator folds
as it appends, ``veriml log audit`` folds from scratch, and both must reach the same
:meth:`LedgerState.digest`. Folding 10^6 entries is a routine audit, so applying one entry
is O(1) amortised (releases of unbonded stake come off a heap).

Every entry is checked in full before it changes anything: :meth:`LedgerState.apply` either
applies an entry or raises :class:`LedgerError` naming its log index and leaves the state as
it was. The rules, in brief (docs/ledger.md has them all):

- the ledger clock is the latest ``at`` folded; before an entry applies, every unbonding
  whose ``available_at`` the clock has reached returns to its balance;
- deposits mint; stake, unstake, fees, challenges' bonds move money between places, never
  below zero; a verdict returns the bond unless the challenger lost, when it is burned;
- a slash takes from stake, then unbonding (newest first), burns ``burned`` and holds the
  rest for that dispute's rewards; a reward spends that held amount (minted when it belongs
  to no dispute);
- ``node`` entries open the node's account; an accepted ``inference`` credits each agreeing
  node one job and one point of reputation; ``model`` entries only count.

At every point ``minted == balances + stakes + unbonding + open bonds + held + burned``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.ledger.entries import (
    AMOUNT_LIMIT,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    Entry,
    FeeEntry,
    InferenceEntry,
    LedgerEntry,
    ModelEntry,
    NodeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
    parse_entry,
)

__all__ = [
    "STATE_FORMAT",
    "Account",
    "LedgerError",
    "LedgerState",
    "OpenDispute",
    "Totals",
    "Unbonding",
    "fold",
]

STATE_FORMAT = "veriml-ledger/v1"


class LedgerError(FormatError):
    """An entry the fold refuses: it would overdraw a balance, a stake or a dispute's held
    slash, close an unknown dispute, open one twice, or it does not parse. ``index`` is the
    entry's log index; an auditor fails on it."""

    def __init__(self, message: str, *, index: int, **evidence: Any) -> None:
        super().__init__(message, index=index, **evidence)
        self.index = index


@dataclass(frozen=True, slots=True)
class Unbonding:
    """Stake on its way out: slashable until ``available_at``, then back in the balance."""

    amount: int
    available_at: str

    def to_json(self) -> dict[str, Any]:
        return {"amount": self.amount, "available_at": self.available_at}


@dataclass(slots=True)
class Account:
    """One account's money and record. The state hands out copies: changing one changes
    nothing in the ledger."""

    balance: int = 0
    stake: int = 0
    unbonding: list[Unbonding] = field(default_factory=list)
    reputation: int = 0
    jobs: int = 0
    slashes: int = 0
    slashed: int = 0

    @property
    def unbonding_total(self) -> int:
        return sum(u.amount for u in self.unbonding)

    def copy(self) -> Account:
        return Account(
            self.balance,
            self.stake,
            list(self.unbonding),
            self.reputation,
            self.jobs,
            self.slashes,
            self.slashed,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "balance": self.balance,
            "stake": self.stake,
            "unbonding": [u.to_json() for u in self.unbonding],
            "reputation": self.reputation,
            "jobs": self.jobs,
            "slashes": self.slashes,
            "slashed": self.slashed,
        }


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """A dispute between its challenge and its verdict; ``bond`` is locked in it."""

    inference: str
    defendant: str
    challenger: str
    bond: int
    opened_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "inference": self.inference,
            "defendant": self.defendant,
            "challenger": self.challenger,
            "bond": self.bond,
            "opened_at": self.opened_at,
        }


@dataclass(slots=True)
class Totals:
    """Running sums. ``staked`` is the current stake plus unbonding of every account; the
    others only grow."""

    minted: int = 0
    burned: int = 0
    staked: int = 0
    fees: int = 0
    rewards: int = 0
    slashed: int = 0

    def copy(self) -> Totals:
        return Totals(self.minted, self.burned, self.staked, self.fees, self.rewards, self.slashed)

    def to_json(self) -> dict[str, int]:
        return {
            "minted": self.minted,
            "burned": self.burned,
            "staked": self.staked,
            "fees": self.fees,
            "rewards": self.rewards,
            "slashed": self.slashed,
        }


class _Change:
    """One entry's effect, computed on copies of what it touches. The state takes it only
    when the whole entry checked out, so a refused entry changes nothing."""

    __slots__ = (
        "accounts",
        "closed",
        "due",
        "held",
        "index",
        "kind",
        "opened",
        "pushes",
        "state",
        "totals",
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

    def fail(self, message: str, **evidence: Any) -> LedgerError:
        return LedgerError(message, index=self.index, type=self.kind, **evidence)

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


class LedgerState:
    """The ledger folded up to :attr:`size` entries; mutable, one entry at a time.

    >>> state = LedgerState()
    >>> state.apply(DepositEntry("alice", 10, "2026-11-26T10:00:00.000000Z"))
    >>> state.account("alice").balance, state.size
    (10, 1)
    """

    def __init__(self) -> None:
        self.size = 0
        self.at: str | None = None
        self._totals = Totals()
        self._accounts: dict[str, Account] = {}
        self._disputes: dict[str, OpenDispute] = {}
        self._known_disputes: set[str] = set()
        self._held: dict[str, int] = {}
        # (available_at, account) per unstake: a min-heap, so each entry finds the due
        # releases without scanning accounts. Entries may be stale (slashed away, released).
        self._releases: list[tuple[str, str]] = []

    # -- reading -------------------------------------------------------------------------------

    def account(self, account_id: str) -> Account:
        """A copy of ``account_id``'s account; zeros when no entry named it."""
        found = self._accounts.get(account_id)
        return Account() if found is None else found.copy()

    def accounts(self) -> dict[str, Account]:
        """Copies of every account an entry named, sorted by id."""
        return {k: self._accounts[k].copy() for k in sorted(self._accounts)}

    def stake_of(self, account_id: str) -> int:
        found = self._accounts.get(account_id)
        return 0 if found is None else found.stake

    def reputation_of(self, account_id: str) -> int:
        found = self._accounts.get(account_id)
        return 0 if found is None else found.reputation

    @property
    def totals(self) -> Totals:
        """A copy of the running totals."""
        return self._totals.copy()

    @property
    def open_disputes(self) -> Mapping[str, OpenDispute]:
        """Disputes challenged and not yet decided, by id (a read-only view)."""
        return MappingProxyType(self._disputes)

    @property
    def held(self) -> Mapping[str, int]:
        """Slashed amounts not burned and not yet paid as rewards, by dispute (read-only)."""
        return MappingProxyType(self._held)

    def to_json(self) -> dict[str, Any]:
        """The state in the format of docs/verification.md, "State" (accounts sorted)."""
        return {
            "format": STATE_FORMAT,
            "size": self.size,
            "at": self.at,
            "accounts": {k: self._accounts[k].to_json() for k in sorted(self._accounts)},
            "disputes": {k: self._disputes[k].to_json() for k in sorted(self._disputes)},
            "totals": self._totals.to_json(),
        }

    def digest(self) -> Digest:
        """SHA-256 of the RFC 8785 form of :meth:`to_json`: equal for equal folds."""
        return canonical_digest(self.to_json())

    def copy(self) -> LedgerState:
        """An independent copy (to try entries on without touching this state)."""
        other = LedgerState()
        other.size = self.size
        other.at = self.at
        other._totals = self._totals.copy()
        other._accounts = {k: a.copy() for k, a in self._accounts.items()}
        other._disputes = dict(self._disputes)
        other._known_disputes = set(self._known_disputes)
        other._held = dict(self._held)
        other._releases = list(self._releases)
        return other

    # -- folding -------------------------------------------------------------------------------

    def apply(self, entry: bytes | Entry, index: int | None = None) -> None:
        """Fold one entry (its logged bytes, or the entry parsed once by the caller).

        ``index`` is the entry's log index, for errors (default: :attr:`size`). Raises
        :class:`LedgerError` and leaves the state unchanged when the entry is refused.
        """
        self._run(entry, self.size if index is None else index, commit=True)

    def check(self, entry: bytes | Entry, index: int | None = None) -> None:
        """Raise :class:`LedgerError` exactly when :meth:`apply` would; change nothing."""
        self._run(entry, self.size if index is None else index, commit=False)

    def _run(self, entry: bytes | Entry, index: int, *, commit: bool) -> None:
        if isinstance(entry, bytes | bytearray | memoryview):
            try:
                entry = parse_entry(bytes(entry))
            except FormatError as exc:
                raise LedgerError(
                    "entry does not parse", index=index, reason=exc.diagnostics()
                ) from exc
        if isinstance(entry, InferenceEntry):
            if commit:
                self._credit(entry)
        elif isinstance(entry, NodeEntry):
            node_id = self._node_id(entry, index)
            if commit:
                self._accounts.setdefault(node_id, Account())
        elif isinstance(entry, ModelEntry):
            pass
        else:
            self._run_timed(entry, index, commit=commit)
            return
        if commit:
            self.size += 1

    def _credit(self, entry: InferenceEntry) -> None:
        if entry.verdict.outcome != "accepted":
            return
        for node_id in dict.fromkeys(entry.verdict.agreeing):
            account = self._accounts.get(node_id)
            if account is None:
                account = self._accounts[node_id] = Account()
            account.jobs += 1
            account.reputation += 1

    @staticmethod
    def _node_id(entry: NodeEntry, index: int) -> str:
        try:
            return entry.open().node_id
        except (VerificationError, FormatError) as exc:
            raise LedgerError(
                "node entry's descriptor does not verify",
                index=index,
                type="node",
                reason=exc.diagnostics(),
            ) from exc

    def _run_timed(self, entry: Entry, index: int, *, commit: bool) -> None:
        found = _HANDLERS.get(type(entry))
        if found is None:
            raise LedgerError("not a ledger entry", index=index, type=type(entry).__name__)
        kind, handler = found
        at = cast(LedgerEntry, entry).at
        clock = at if self.at is None or at > self.at else self.at
        change = _Change(self, index, kind)
        releases = self._releases
        try:
            # Releases first: the entry sees the balances as of its own time.
            while releases and releases[0][0] <= clock:
                due = heapq.heappop(releases)
                change.due.append(due)
                change.release(due[1], clock)
            handler(change, entry)
            change.check_range()
        except BaseException:
            for due in change.due:
                heapq.heappush(releases, due)
            raise
        if not commit:
            for due in change.due:
                heapq.heappush(releases, due)
            return
        self._accounts.update(change.accounts)
        for dispute, amount in change.held.items():
            if amount:
                self._held[dispute] = amount
            else:
                self._held.pop(dispute, None)
        for dispute in change.closed:
            del self._disputes[dispute]
        self._disputes.update(change.opened)
        self._known_disputes.update(change.opened)
        for item in change.pushes:
            heapq.heappush(releases, item)
        self._totals = change.totals
        self.at = clock
        self.size += 1


def fold(entries: Iterable[bytes | Entry], *, start: LedgerState | None = None) -> LedgerState:
    """Fold ``entries`` in log order onto ``start`` (advanced in place and returned) or onto
    an empty state. Folding a log in chunks, each onto the last state, gives the same state
    as one fold. Raises :class:`LedgerError` at the first refused entry (the entries before
    it are folded)."""
    state = LedgerState() if start is None else start
    apply = state.apply
    for entry in entries:
        apply(entry)
    return state


# -- the rules, one per entry type (docs/ledger.md) -----------------------------------------


def _deposit(change: _Change, entry: DepositEntry) -> None:
    change.account(entry.account).balance += entry.amount
    change.totals.minted += entry.amount


def _stake(change: _Change, entry: StakeEntry) -> None:
    account = change.account(entry.account)
    if account.balance < entry.amount:
        raise change.fail(
            "stake exceeds the balance",
            account=entry.account,
            balance=account.balance,
            amount=entry.amount,
        )
    account.balance -= entry.amount
    account.stake += entry.amount
    change.totals.staked += entry.amount


def _unstake(change: _Change, entry: UnstakeEntry) -> None:
    account = change.account(entry.account)
    if account.stake < entry.amount:
        raise change.fail(
            "unstake exceeds the stake",
            account=entry.account,
            stake=account.stake,
            amount=entry.amount,
        )
    if entry.amount:
        account.stake -= entry.amount
        account.unbonding.append(Unbonding(entry.amount, entry.available_at))
        change.pushes.append((entry.available_at, entry.account))


def _fee(change: _Change, entry: FeeEntry) -> None:
    payer = change.account(entry.payer)
    if payer.balance < entry.amount:
        raise change.fail(
            "fee exceeds the payer's balance",
            account=entry.payer,
            balance=payer.balance,
            amount=entry.amount,
        )
    payer.balance -= entry.amount
    change.account(entry.payee).balance += entry.amount
    change.totals.fees += entry.amount


def _challenge(change: _Change, entry: ChallengeEntry) -> None:
    if change.known(entry.dispute):
        raise change.fail("dispute was already opened", dispute=entry.dispute)
    challenger = change.account(entry.challenger_account)
    if challenger.balance < entry.bond:
        raise change.fail(
            "bond exceeds the challenger's balance",
            account=entry.challenger_account,
            balance=challenger.balance,
            amount=entry.bond,
        )
    challenger.balance -= entry.bond
    change.account(entry.defendant_node)
    if "node" in entry.challenger:
        change.account(str(entry.challenger["node"]))
    change.opened[entry.dispute] = OpenDispute(
        entry.inference, entry.defendant_node, entry.challenger_account, entry.bond, entry.at
    )


def _verdict(change: _Change, entry: DisputeVerdictEntry) -> None:
    dispute = change.state._disputes.get(entry.dispute)
    if dispute is None:
        settled = entry.dispute in change.state._known_disputes
        message = "dispute was already decided" if settled else "no such dispute"
        raise change.fail(message, dispute=entry.dispute)
    change.closed.append(entry.dispute)
    if entry.challenger_lost:
        change.totals.burned += dispute.bond
    else:
        change.account(dispute.challenger).balance += dispute.bond


def _slash(change: _Change, entry: SlashEntry) -> None:
    if not change.known(entry.dispute):
        raise change.fail("slash for no such dispute", dispute=entry.dispute)
    account = change.account(entry.account)
    slashable = account.stake + account.unbonding_total
    if slashable < entry.amount:
        raise change.fail(
            "slash exceeds the stake and unbonding",
            account=entry.account,
            slashable=slashable,
            amount=entry.amount,
        )
    from_stake = min(account.stake, entry.amount)
    account.stake -= from_stake
    rest = entry.amount - from_stake
    while rest:  # unbonding, newest first
        last = account.unbonding[-1]
        if last.amount <= rest:
            account.unbonding.pop()
            rest -= last.amount
        else:
            account.unbonding[-1] = Unbonding(last.amount - rest, last.available_at)
            rest = 0
    account.slashes += 1
    account.slashed += entry.amount
    change.held[entry.dispute] = change.held_of(entry.dispute) + entry.amount - entry.burned
    totals = change.totals
    totals.staked -= entry.amount
    totals.slashed += entry.amount
    totals.burned += entry.burned


def _reward(change: _Change, entry: RewardEntry) -> None:
    if entry.dispute is None:
        change.totals.minted += entry.amount
    else:
        held = change.held_of(entry.dispute)
        if held < entry.amount:
            raise change.fail(
                "reward exceeds the dispute's held slash",
                dispute=entry.dispute,
                held=held,
                amount=entry.amount,
            )
        change.held[entry.dispute] = held - entry.amount
    change.account(entry.account).balance += entry.amount
    change.totals.rewards += entry.amount


def _reputation(change: _Change, entry: ReputationEntry) -> None:
    if entry.dispute is not None and not change.known(entry.dispute):
        raise change.fail("reputation for no such dispute", dispute=entry.dispute)
    change.account(entry.account).reputation += entry.delta


_HANDLERS: dict[type, tuple[str, Callable[[_Change, Any], None]]] = {
    DepositEntry: ("deposit", _deposit),
    StakeEntry: ("stake", _stake),
    UnstakeEntry: ("unstake", _unstake),
    FeeEntry: ("fee", _fee),
    ChallengeEntry: ("challenge", _challenge),
    DisputeVerdictEntry: ("verdict", _verdict),
    SlashEntry: ("slash", _slash),
    RewardEntry: ("reward", _reward),
    ReputationEntry: ("reputation", _reputation),
}
