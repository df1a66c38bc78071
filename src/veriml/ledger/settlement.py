"""The settlement rule: who pays what after a dispute's verdict (docs/ledger.md, "Settlement").

One pure function, :func:`settle`. The coordinator never writes a slash, a reward or a
reputation change of its own: it logs the verdict together with the entries the ledger's fold
derives from it (:meth:`LedgerState.settlement`), and the fold of every auditor refuses a
settlement entry that is not exactly the next one the rule gives. So a slash without a verdict,
a second slash for one dispute, a reward nobody won and a made-up reputation change are all
refused when the log is folded.

The rule, for a verdict of ``winner``:

- each **loser** (``defendant`` loses when the challenger wins; ``challenger`` when the
  defendant wins; both for ``neither``; nobody for ``none``) is slashed ``slash_bp`` of the
  stake and unbonding of the account that bonds it: a node's **operator**, or the challenger's
  own account when it is not a node. The slash is written even when it is 0, so every
  conviction is in the log;
- a winning challenger is paid ``reward_bp`` of the defendant's slash (from the slash; the rest
  is burned);
- reputation: +1 to the winner (a node id, or the challenging account), -100 to each loser.

The challenger's bond is the verdict entry's own business: returned unless the challenger lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from veriml.ledger.entries import (
    DisputeVerdictEntry,
    LedgerEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
)
from veriml.ledger.rules import Rules

__all__ = ["LOST", "WON", "Parties", "settle"]

WON = 1
LOST = -100


@dataclass(frozen=True, slots=True)
class Parties:
    """A dispute's parties as the challenge entry names them: the defendant node, the
    challenger's account and, when a node challenged, its node."""

    defendant: str
    challenger: str
    challenger_node: str | None = None


def settle(
    verdict: DisputeVerdictEntry,
    parties: Parties,
    rules: Rules,
    *,
    bonding: Callable[[str], str],
    slashable: Callable[[str], int],
) -> list[LedgerEntry]:
    """The entries that follow ``verdict`` in the log, in order: slashes, the reward, then
    reputation. ``bonding(node_or_account)`` is the account whose stake answers for it (a
    node's operator); ``slashable(account)`` its stake plus unbonding at the verdict."""
    at, dispute = verdict.at, verdict.dispute
    # Each side as reputation sees it (a node, or the challenging account) and as stake does.
    party = {"defendant": parties.defendant, "challenger": parties.challenger_node}
    if party["challenger"] is None:
        party["challenger"] = parties.challenger
    account = {
        "defendant": bonding(parties.defendant),
        "challenger": parties.challenger
        if parties.challenger_node is None
        else bonding(parties.challenger_node),
    }
    losers = {
        "defendant": ("challenger",),
        "challenger": ("defendant",),
        "neither": ("defendant", "challenger"),
        "none": (),
    }[verdict.winner]
    entries: list[LedgerEntry] = []
    paid = 0
    for loser in dict.fromkeys(account[side] for side in losers):
        # Two losing nodes of one operator answer with one stake: one slash.
        amount = math.floor(slashable(loser) * rules.slash_fraction)
        reward = math.floor(amount * rules.reward_fraction) if verdict.winner == "challenger" else 0
        paid += reward
        entries.append(SlashEntry(loser, amount, amount - reward, dispute, at))
    if verdict.winner == "challenger" and paid > 0:
        entries.append(RewardEntry(parties.challenger, paid, "challenge", at, dispute))
    if verdict.winner in ("defendant", "challenger"):
        entries.append(ReputationEntry(str(party[verdict.winner]), WON, "dispute-won", at, dispute))
    for loser in dict.fromkeys(str(party[side]) for side in losers):
        entries.append(ReputationEntry(loser, LOST, "dispute-lost", at, dispute))
    return entries
