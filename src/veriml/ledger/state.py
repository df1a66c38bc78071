"""The ledger state: a deterministic fold over the log's entries (docs/ledger.md).

Pure code, no I/O, integer amounts, times taken from the entries only: the coordinator folds
as it appends, ``veriml log audit`` folds from scratch, and both must reach the same
:meth:`LedgerState.digest`. Folding 10^6 entries is a routine audit, so applying one entry
is O(1) amortised (releases of unbonded stake come off a heap).

Every entry is checked in full before it changes anything: :meth:`LedgerState.apply` either
applies an entry or raises :class:`LedgerError` naming its log index and leaves the state as
it was. The fold checks **authority**, not just arithmetic (docs/ledger.md, "Authority"):

- money moves only with the signature of the account it leaves: ``stake``, ``unstake`` and
  ``fee`` entries carry their account's signed request, each request is used once (fees: up to
  the amount it allows), and ``deposit`` requests are signed by the rules' ``admin``;
- ``state`` entries set the rules and commit to the bond map, which the fold recomputes;
- an ``unstake`` is released no earlier than the rules' ``unstake_delay`` after it;
- a ``verdict`` is followed, at once and in order, by exactly the settlement that
  :func:`veriml.ledger.settlement.settle` derives from it; no other slash, reward or
  reputation change is accepted, so none can be written without a verdict, nor twice;
- a challenge about one receipt and one claimed output is opened once;
- a node is bound to one operator for good; a namespace is claimed once, and only its owner's
  signed models use names in it;
- ``beacon`` epochs follow one another and epoch ``e`` reveals the key epoch ``e - 2``
  committed to (``REVEAL_LAG``); every draw secret revealed in a verdict of that epoch must
  follow from the key, an epoch that drew requests must be revealed, and a request draws
  from the latest epoch or the one before.

The money rules, in brief: the ledger clock is the latest ``at`` folded; before an entry
applies, every unbonding whose ``available_at`` the clock has reached returns to its balance;
deposits mint; stake, unstake, fees and challenges' bonds move money, never below zero; a
verdict returns the bond unless the challenger lost, when it is burned; a slash takes from
stake, then unbonding (newest first), burns ``burned`` and holds the rest for that dispute's
reward. An accepted ``inference`` credits each agreeing node one job; a paid ``fee`` one point
of reputation to its payee (free inference earns none).

At every point ``minted == balances + stakes + unbonding + open bonds + held + burned``.
"""

from __future__ import annotations

import datetime as dt
import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import FormatError, VerificationError
from veriml.core.keys import VerifyingKey
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger.bonds import BondMap
from veriml.ledger.entries import (
    AMOUNT_LIMIT,
    BeaconEntry,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    Entry,
    FeeEntry,
    InferenceEntry,
    LedgerEntry,
    ModelEntry,
    NamespaceEntry,
    NodeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    parse_entry,
)
from veriml.ledger.rules import Rules
from veriml.ledger.settlement import Parties, settle
from veriml.protocol.accounts import LedgerRequest, account_key
from veriml.protocol.draw import Draw, beacon_commitment
from veriml.protocol.prefill_check import PREFILL_CHECK_PREDICATE_TYPE

__all__ = [
    "REQUEST_SKEW",
    "STATE_FORMAT",
    "Account",
    "LedgerError",
    "LedgerState",
    "OpenDispute",
    "Totals",
    "Unbonding",
    "fold",
]

STATE_FORMAT = "veriml-ledger/v2"
REQUEST_SKEW = dt.timedelta(minutes=10)
REVEAL_LAG = 2
"""Epoch ``e``'s beacon entry reveals the key of epoch ``e - REVEAL_LAG``."""
"""How far a signed request's ``issued_at`` may be from the ``at`` of the entry carrying it."""


class LedgerError(FormatError):
    """An entry the fold refuses: it would overdraw a balance, a stake or a dispute's held
    slash, it was not authorised by the account it debits, it does not follow from a verdict,
    or it does not parse. ``index`` is the entry's log index; an auditor fails on it."""

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
    challenger_node: str | None = None

    @property
    def parties(self) -> Parties:
        return Parties(self.defendant, self.challenger, self.challenger_node)

    def to_json(self) -> dict[str, Any]:
        out = {
            "inference": self.inference,
            "defendant": self.defendant,
            "challenger": self.challenger,
            "bond": self.bond,
            "opened_at": self.opened_at,
        }
        if self.challenger_node is not None:
            out["challenger_node"] = self.challenger_node
        return out


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


@dataclass(frozen=True, slots=True)
class _Paying:
    """The latest inference entry, for the fees that must follow it at once: its request id,
    its receipts by the node each names, and the payees paid so far."""

    request: str
    receipts: Mapping[str, tuple[Envelope, ...]]
    paid: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class _Epoch:
    commitment: Digest
    index: int
    """The log index of the ``beacon`` entry that began the epoch."""
    key: bytes | None = None


@dataclass(frozen=True, slots=True)
class _PendingDraw:
    """An inference whose draw secret is checked once its epoch's key is revealed."""

    index: int
    request_id: str
    draw: Draw

    def check(self, key: bytes, change: _Change) -> None:
        if not self.draw.matches(key, self.request_id):
            raise change.fail(
                "an inference's draw secret does not follow from its epoch's key",
                inference=self.request_id,
                inference_index=self.index,
                epoch=self.draw.epoch,
            )


class _Change:
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
        self.paying: _Paying | None = None
        self.rules: Rules | None = None
        self.state_ref: tuple[int, str] | None = None
        self.epoch: tuple[int, _Epoch, bytes | None] | None = None
        self.expect: list[LedgerEntry] | None = None
        self.draws: list[tuple[int, _PendingDraw]] = []

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

    def authorised(self, request: LedgerRequest, envelope_payload: bytes, at: str) -> None:
        """A signed request is used once, and within :data:`REQUEST_SKEW` of its entry."""
        digest = Digest.of(envelope_payload)
        if digest in self.state._used or digest in self.used:
            raise self.fail("this signed request was already used", request=digest)
        self.used.append(digest)
        self.near(request.issued_at, at)

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


class LedgerState:
    """The ledger folded up to :attr:`size` entries; mutable, one entry at a time."""

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
        self._rules: Rules | None = None
        self._states: dict[int, str] = {}  # state entry index -> its at
        self._latest_state: int | None = None
        self._operators: dict[str, str] = {}  # node -> operator account
        self._node_keys: dict[str, str] = {}  # node -> its registered public key (PEM)
        # The latest inference entry, for the fees that must follow it at once: its request
        # id, the nodes whose receipts it holds, and the payees paid so far.
        self._paying: _Paying | None = None
        self._namespaces: dict[str, str] = {}  # namespace -> owner key id
        self._used: set[Digest] = set()  # signed requests already folded
        self._spent: dict[Digest, int] = {}  # payment request -> fees paid under it
        self._claims: set[Digest] = set()
        self._epochs: dict[int, _Epoch] = {}
        self._draws: dict[int, list[_PendingDraw]] = {}  # epoch -> draws awaiting its key
        self._expect: tuple[LedgerEntry, ...] = ()

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

    def operator_of(self, node: str) -> str | None:
        """The operator account a registered node is bound to (None: no node entry)."""
        return self._operators.get(node)

    def bonded(self, node: str) -> bool:
        """Whether ``node``'s operator has at least the rules' ``min_stake``."""
        operator = self._operators.get(node)
        rules = self._rules
        return (
            operator is not None
            and rules is not None
            and self.stake_of(operator) >= rules.min_stake
        )

    def namespace_owner(self, namespace: str) -> str | None:
        return self._namespaces.get(namespace)

    def disputed(self, claim: Digest) -> bool:
        """Whether a challenge with this claim (:attr:`ChallengeEntry.claim`: a receipt and
        the outputs claimed instead) was ever opened: a second one would be refused."""
        return claim in self._claims

    @property
    def rules(self) -> Rules | None:
        """The rules of the latest ``state`` entry (None before the first)."""
        return self._rules

    @property
    def latest_state(self) -> int | None:
        """The log index of the latest ``state`` entry."""
        return self._latest_state

    def state_at(self, index: int) -> str | None:
        """The ``at`` of the ``state`` entry at log ``index`` (None: not a state entry)."""
        return self._states.get(index)

    def bond_map(self) -> BondMap:
        """The bond map of the current stakes (what the next ``state`` entry commits to)."""
        return BondMap.of({k: a.stake for k, a in self._accounts.items()})

    @property
    def epoch(self) -> int | None:
        """The latest beacon epoch (None before the first)."""
        return max(self._epochs) if self._epochs else None

    def epoch_key(self, epoch: int) -> bytes | None:
        """An epoch's revealed key (None while it is secret, or for an unknown epoch)."""
        found = self._epochs.get(epoch)
        return None if found is None else found.key

    def epoch_index(self, epoch: int) -> int | None:
        """The log index of the ``beacon`` entry that began ``epoch`` (None: not begun)."""
        found = self._epochs.get(epoch)
        return None if found is None else found.index

    @property
    def unchecked_draws(self) -> int:
        """Draws logged in epochs whose key is not revealed yet (checked at the reveal)."""
        return sum(len(d) for d in self._draws.values())

    @property
    def expected(self) -> tuple[LedgerEntry, ...]:
        """The settlement entries the log must hold next (after a verdict), in order."""
        return self._expect

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
        """The state in the format of docs/ledger.md, "State" (accounts sorted)."""
        return {
            "format": STATE_FORMAT,
            "size": self.size,
            "at": self.at,
            "rules": None if self._rules is None else self._rules.to_json(),
            "accounts": {k: self._accounts[k].to_json() for k in sorted(self._accounts)},
            "operators": dict(sorted(self._operators.items())),
            "namespaces": dict(sorted(self._namespaces.items())),
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
        other._rules = self._rules
        other._states = dict(self._states)
        other._latest_state = self._latest_state
        other._operators = dict(self._operators)
        other._node_keys = dict(self._node_keys)
        other._paying = self._paying
        other._namespaces = dict(self._namespaces)
        other._used = set(self._used)
        other._spent = dict(self._spent)
        other._claims = set(self._claims)
        other._epochs = dict(self._epochs)
        other._draws = {e: list(d) for e, d in self._draws.items()}
        other._expect = self._expect
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
        found = _HANDLERS.get(type(entry))
        if found is None:
            raise LedgerError("not a ledger entry", index=index, type=type(entry).__name__)
        kind, handler = found
        change = _Change(self, index, kind)
        at = getattr(entry, "at", None)
        clock = self.at if at is None or (self.at is not None and at <= self.at) else at
        releases = self._releases
        try:
            if self._expect:
                if entry != self._expect[0]:
                    dispute = getattr(self._expect[0], "dispute", "?")
                    raise change.fail(
                        "the settlement of a verdict must follow it, exactly as the rule gives",
                        dispute=dispute,
                        expected=type(self._expect[0]).__name__,
                    )
                change.expect = list(self._expect[1:])
            elif isinstance(entry, SlashEntry | RewardEntry | ReputationEntry):
                raise change.fail(
                    f"a {kind} entry must follow from a logged verdict",
                    dispute=getattr(entry, "dispute", None),
                )
            # Releases first: the entry sees the balances as of its own time.
            if clock is not None:
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
        self._commit(change)
        if clock is not None:
            self.at = clock
        self.size += 1

    def _commit(self, change: _Change) -> None:
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
            heapq.heappush(self._releases, item)
        self._totals = change.totals
        self._used.update(change.used)
        self._spent.update(change.spent)
        self._claims.update(change.claims)
        self._namespaces.update(change.namespaces)
        self._operators.update(change.operators)
        self._node_keys.update(change.node_keys)
        self._paying = change.paying
        if change.rules is not None:
            self._rules = change.rules
        if change.state_ref is not None:
            index, at = change.state_ref
            self._states[index] = at
            self._latest_state = index
        if change.epoch is not None:
            number, epoch, reveal = change.epoch
            self._epochs[number] = epoch
            revealed = number - REVEAL_LAG
            if reveal is not None and revealed >= 0:
                self._epochs[revealed] = replace(self._epochs[revealed], key=reveal)
            self._draws.pop(revealed, None)  # checked by the reveal (or nothing was drawn)
        for number, pending in change.draws:
            self._draws.setdefault(number, []).append(pending)
        if change.expect is not None:
            self._expect = tuple(change.expect)


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


def _payload(entry: DepositEntry | StakeEntry | UnstakeEntry | FeeEntry | ChallengeEntry) -> bytes:
    assert entry.authorization is not None  # the entry cannot be built without one
    return entry.authorization.payload


def _deposit(change: _Change, entry: DepositEntry) -> None:
    rules = change.rules_or_fail()
    request = entry.request
    if request.account != rules.admin:
        raise change.fail(
            "a deposit must be signed by the ledger's admin account",
            signer=request.account,
            admin=rules.admin,
        )
    change.authorised(request, _payload(entry), entry.at)
    change.account(entry.account).balance += entry.amount
    change.totals.minted += entry.amount


def _stake(change: _Change, entry: StakeEntry) -> None:
    change.authorised(entry.request, _payload(entry), entry.at)
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
    rules = change.rules_or_fail()
    change.authorised(entry.request, _payload(entry), entry.at)
    earliest = format_time(parse_time(entry.at) + dt.timedelta(seconds=rules.unstake_delay))
    if entry.available_at < earliest:
        raise change.fail(
            "an unstake is released no earlier than the rules' unstake delay",
            available_at=entry.available_at,
            earliest=earliest,
        )
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
    paying = change.state._paying
    if paying is None or paying.request != entry.inference:
        raise change.fail(
            "a fee follows, at once, the inference entry of the request it pays for",
            inference=entry.inference,
        )
    receipts = paying.receipts.get(entry.payee)
    if not receipts or entry.payee in paying.paid:
        raise change.fail(
            "a fee pays, once, a node whose receipt is in the inference entry",
            payee=entry.payee,
            inference=paying.request,
        )
    # The payee signed that receipt with its registered key: a made-up statement naming an
    # account is no work done.
    node_key = change.state._node_keys.get(entry.payee)
    if node_key is None:
        raise change.fail(
            "a fee pays a node for a receipt it signed",
            payee=entry.payee,
            reason="the payee is not a registered node",
        )
    signer = account_key(node_key)
    if not any(_signed_by(receipt, signer) for receipt in receipts):
        raise change.fail(
            "a fee pays a node for a receipt it signed",
            payee=entry.payee,
            reason="no receipt in the inference entry is the payee's signature",
        )
    change.paying = replace(paying, paid=paying.paid | {entry.payee})
    request = entry.request
    change.near(request.issued_at, entry.at)
    key = Digest.of(_payload(entry))
    spent = change.spent.get(key, change.state._spent.get(key, 0)) + entry.amount
    if spent > request.amount:
        raise change.fail(
            "fees exceed what the payer's signed payment allows",
            request=entry.inference,
            allowed=request.amount,
            spent=spent,
        )
    change.spent[key] = spent
    payer = change.account(entry.payer)
    if payer.balance < entry.amount:
        raise change.fail(
            "fee exceeds the payer's balance",
            account=entry.payer,
            balance=payer.balance,
            amount=entry.amount,
        )
    payer.balance -= entry.amount
    payee = change.account(entry.payee)
    payee.balance += entry.amount
    if entry.amount > 0:
        payee.reputation += 1  # a paid job: free requests earn no reputation
    change.totals.fees += entry.amount


def _signed_statement(
    change: _Change, party: Mapping[str, Any], node: str, inference: str
) -> tuple[str, Statement]:
    """A party's ``statement`` is a DSSE envelope signed by ``node``'s registered key, naming
    ``node`` and about ``inference``; the SHA-256 of its payload, and the statement."""
    statement = party.get("statement")
    key_pem = change.state._node_keys.get(node)
    if statement is None or key_pem is None:
        raise change.fail(
            "a node party carries its own signed statement, and the node is registered",
            node=node,
        )
    envelope = Envelope.from_json(statement)
    try:
        envelope.verify([account_key(key_pem)])
        signed = Statement.from_bytes(envelope.payload)
    except (VerificationError, FormatError) as exc:
        raise change.fail(
            "a party's statement is not signed by its node", node=node, reason=exc.message
        ) from exc
    request = signed.predicate.get("request")
    if not isinstance(request, Mapping) or request.get("id") != inference:
        raise change.fail("a party's statement is about another inference", node=node)
    named = signed.predicate.get("node")
    if not isinstance(named, Mapping) or named.get("id") != node:
        raise change.fail("a party's statement names another node", node=node)
    return Digest.of(envelope.payload).to_text(), signed


def _signed_by(envelope: Envelope, key: VerifyingKey) -> bool:
    try:
        envelope.verify([key])
    except VerificationError:
        return False
    return True


def _claims(statement: Statement, entry: ChallengeEntry) -> bool:
    """Whether a challenger node's statement claims what the challenge says it does: a
    receipt whose outputs are the challenger's claimed ones, or a prefill check of exactly
    the challenged receipt that rejected it (the checking node claims no outputs). A node's
    other logged statements (an agreeing receipt, an accepting check) cannot be used to drag
    it into a dispute it would lose."""
    subjects = {s.name: s.digest.to_text() for s in statement.subjects}
    if statement.predicate_type == PREFILL_CHECK_PREDICATE_TYPE:
        report = statement.predicate.get("report")
        return (
            subjects == {"receipt": entry.defendant["receipt"]}
            and not entry.challenger["outputs"]
            and isinstance(report, Mapping)
            and report.get("accepted") is False
        )
    return bool(subjects) and subjects == dict(entry.challenger["outputs"])


def _challenge(change: _Change, entry: ChallengeEntry) -> None:
    if change.known(entry.dispute):
        raise change.fail("dispute was already opened", dispute=entry.dispute)
    # Both sides signed into the dispute: the defendant's own receipt, and the challenger's
    # signed challenge request or (a node) its own statement about the inference.
    receipt, _ = _signed_statement(change, entry.defendant, entry.defendant_node, entry.inference)
    if receipt != entry.defendant["receipt"]:
        raise change.fail("the defendant's statement is not the challenged receipt")
    node = entry.challenger.get("node")
    if entry.authorization is None and (node is None or node != entry.challenger_account):
        raise change.fail(
            "a challenger signs its challenge: a signed challenge request, or its node's "
            "signed statement",
            challenger=entry.challenger_account,
        )
    if node is not None:
        # A node named as the challenger stands by its own signed statement, whoever bonds,
        # and the statement claims what the challenge claims.
        _, statement = _signed_statement(change, entry.challenger, str(node), entry.inference)
        if not _claims(statement, entry):
            raise change.fail(
                "a challenger node's statement does not claim what the challenge claims",
                node=str(node),
            )
    claim = entry.claim
    if claim in change.state._claims:
        raise change.fail(
            "this receipt was already disputed with this claim", inference=entry.inference
        )
    change.claims.append(claim)
    if entry.authorization is not None:
        change.authorised(
            LedgerRequest.open(entry.authorization), entry.authorization.payload, entry.at
        )
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
    node = entry.challenger.get("node")
    if node is not None:
        change.account(str(node))
    change.opened[entry.dispute] = OpenDispute(
        entry.inference,
        entry.defendant_node,
        entry.challenger_account,
        entry.bond,
        entry.at,
        None if node is None else str(node),
    )


def _verdict(change: _Change, entry: DisputeVerdictEntry) -> None:
    rules = change.rules_or_fail()
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

    def slashable(account: str) -> int:
        found = change.account(account)
        return found.stake + found.unbonding_total

    change.expect = settle(
        entry, dispute.parties, rules, bonding=change.operator_of, slashable=slashable
    )


def _slash(change: _Change, entry: SlashEntry) -> None:
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
    assert entry.dispute is not None  # only the settlement writes rewards, always with one
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
    change.account(entry.account).reputation += entry.delta


def _state(change: _Change, entry: StateEntry) -> None:
    bonds = change.state.bond_map()
    root, size = bonds.root(), bonds.size
    if (entry.root, entry.size) != (root, size):
        raise change.fail(
            "the state entry's bond map is not the ledger's",
            claimed=entry.root,
            calculated=root,
            size=size,
        )
    change.rules = entry.rules
    change.state_ref = (change.index, entry.at)


def _beacon(change: _Change, entry: BeaconEntry) -> None:
    epochs = change.state._epochs
    expected = 0 if not epochs else max(epochs) + 1
    if entry.epoch != expected:
        raise change.fail("beacon epochs follow one another", epoch=entry.epoch, expected=expected)
    # Epoch e reveals the key of epoch e - 2: requests draw from the epoch current when they
    # start and may be logged in the next, so a key is revealed only once every job drawn from
    # it has long expired (a node holding a job cannot learn its own spot decision).
    revealed = entry.epoch - REVEAL_LAG
    if entry.reveal is not None:
        if revealed < 0:
            raise change.fail("the first two epochs have nothing to reveal", epoch=entry.epoch)
        committed = epochs[revealed].commitment
        if beacon_commitment(entry.reveal) != committed:
            raise change.fail(
                "the revealed key is not the one its epoch committed to", epoch=revealed
            )
        for pending in change.state._draws.get(revealed, ()):
            pending.check(entry.reveal, change)
    elif change.state._draws.get(revealed):
        # A key "lost" after draws were made from it would leave them unchecked forever: a
        # coordinator could pick its own secrets and never reveal. The keys live in the
        # coordinator's database, beside the log; losing them is losing the database.
        raise change.fail("an epoch that drew requests must reveal its key", epoch=revealed)
    change.epoch = (entry.epoch, _Epoch(entry.commitment, change.index), entry.reveal)


def _namespace(change: _Change, entry: NamespaceEntry) -> None:
    owner = change.state._namespaces.get(entry.namespace)
    if owner is not None:
        raise change.fail(
            "the namespace is already claimed", namespace=entry.namespace, owner=owner
        )
    change.namespaces[entry.namespace] = entry.owner


def _model(change: _Change, entry: ModelEntry) -> None:
    if entry.unsigned:
        return  # owns no name: reachable by digest only
    owner = change.state._namespaces.get(entry.namespace)
    if owner != entry.publisher_key_id:
        raise change.fail(
            "a signed model's name must be in a namespace its publisher owns",
            namespace=entry.namespace,
            owner=owner,
            publisher=entry.publisher_key_id,
        )


def _node(change: _Change, entry: NodeEntry) -> None:
    try:
        descriptor = entry.open()
    except (VerificationError, FormatError) as exc:
        raise change.fail(
            "node entry's descriptor does not verify", reason=exc.diagnostics()
        ) from exc
    node, operator = descriptor.node_id, descriptor.operator
    bound = change.state._operators.get(node)
    if bound is not None and bound != operator:
        raise change.fail(
            "a node stays bound to its first operator", node=node, operator=bound, got=operator
        )
    change.operators[node] = operator
    change.node_keys[node] = descriptor.public_key
    change.account(node)
    change.account(operator)


def _inference(change: _Change, entry: InferenceEntry) -> None:
    if entry.state is not None and entry.state not in change.state._states:
        raise change.fail("the inference cites no state entry", state=entry.state)
    change.paying = _Paying(entry.request_id, _answering(entry))
    draw = entry.verdict.draw
    if draw is not None:
        epoch = change.state._epochs.get(draw.epoch)
        latest = max(change.state._epochs, default=None)
        if epoch is None or latest is None:
            raise change.fail("the inference draws from an epoch not begun", epoch=draw.epoch)
        if draw.epoch < latest - 1:
            # The current epoch, or the one before for a request in flight at the rotation:
            # an older key is public, and choosing among epochs would choose the draw.
            raise change.fail(
                "the inference draws from an epoch that has ended", epoch=draw.epoch, latest=latest
            )
        pending = _PendingDraw(change.index, entry.request_id, draw)
        if epoch.key is not None:
            pending.check(epoch.key, change)
        else:
            change.draws.append((draw.epoch, pending))
    if entry.verdict.outcome != "accepted":
        return
    for node_id in dict.fromkeys(entry.verdict.agreeing):
        change.account(node_id).jobs += 1


def _answering(entry: InferenceEntry) -> dict[str, tuple[Envelope, ...]]:
    """An inference entry's receipts about its own request, by the node each names
    (unverified: a fee to a node checks that one of them is that node's signature)."""
    nodes: dict[str, tuple[Envelope, ...]] = {}
    for receipt in entry.receipts:
        try:
            predicate = Statement.from_bytes(receipt.payload).predicate
        except (FormatError, VerificationError):
            continue
        node, request = predicate.get("node"), predicate.get("request")
        if not (isinstance(request, Mapping) and request.get("id") == entry.request_id):
            continue
        if isinstance(node, Mapping) and isinstance(node.get("id"), str):
            nodes[node["id"]] = (*nodes.get(node["id"], ()), receipt)
    return nodes


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
    StateEntry: ("state", _state),
    BeaconEntry: ("beacon", _beacon),
    NamespaceEntry: ("namespace", _namespace),
    ModelEntry: ("model", _model),
    NodeEntry: ("node", _node),
    InferenceEntry: ("inference", _inference),
}
