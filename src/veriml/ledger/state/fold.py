"""The fold: :class:`LedgerState` takes one entry at a time, each checked in full by its
family's rule before anything changes (docs/ledger.md, "The fold"). Pure: no I/O."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.ledger.bonds import BondMap
from veriml.ledger.entries import (
    Entry,
    LedgerEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    parse_entry,
)
from veriml.ledger.rules import Rules
from veriml.ledger.state import disputes, money, network
from veriml.ledger.state.change import REVEAL_LAG, Change, Epoch, Paying, PendingDraw
from veriml.ledger.state.records import Account, LedgerError, OpenDispute, Totals

__all__ = ["STATE_FORMAT", "LedgerState", "fold"]

STATE_FORMAT = "veriml-ledger/v2"

_RULES: dict[type, Callable[[Change, Any], None]] = money.RULES | disputes.RULES | network.RULES
"""The rule of each entry type, by type."""


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
        self._paying: Paying | None = None
        self._namespaces: dict[str, str] = {}  # namespace -> owner key id
        self._used: set[Digest] = set()  # signed requests already folded
        self._spent: dict[Digest, int] = {}  # payment request -> fees paid under it
        self._claims: set[Digest] = set()
        self._epochs: dict[int, Epoch] = {}
        self._draws: dict[int, list[PendingDraw]] = {}  # epoch -> draws awaiting its key
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
        rule = _RULES.get(type(entry))
        if rule is None:
            raise LedgerError("not a ledger entry", index=index, type=type(entry).__name__)
        kind = entry.TYPE
        change = Change(self, index, kind)
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
            rule(change, entry)
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

    def _commit(self, change: Change) -> None:
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
