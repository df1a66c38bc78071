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

from veriml.ledger.state.change import REQUEST_SKEW, REVEAL_LAG
from veriml.ledger.state.fold import STATE_FORMAT, LedgerState, fold
from veriml.ledger.state.records import Account, LedgerError, OpenDispute, Totals, Unbonding

__all__ = [
    "REQUEST_SKEW",
    "REVEAL_LAG",
    "STATE_FORMAT",
    "Account",
    "LedgerError",
    "LedgerState",
    "OpenDispute",
    "Totals",
    "Unbonding",
    "fold",
]
