"""The ledger: the log's entry types and the state folded from them (docs/ledger.md).

Pure: :func:`fold` turns logged entries into a :class:`LedgerState` (balances, stakes,
reputation, open disputes) with no I/O, so the coordinator and every auditor compute the same
state from the same log.
"""

from veriml.ledger.entries import (
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
from veriml.ledger.state import Account, LedgerError, LedgerState, OpenDispute, fold

__all__ = [
    "Account",
    "ChallengeEntry",
    "DepositEntry",
    "DisputeVerdictEntry",
    "Entry",
    "FeeEntry",
    "InferenceEntry",
    "LedgerEntry",
    "LedgerError",
    "LedgerState",
    "ModelEntry",
    "NodeEntry",
    "OpenDispute",
    "ReputationEntry",
    "RewardEntry",
    "SlashEntry",
    "StakeEntry",
    "UnstakeEntry",
    "fold",
    "parse_entry",
]
