"""The ledger: the log's entry types and the state folded from them (docs/ledger.md).

Pure: :func:`fold` turns logged entries into a :class:`LedgerState` (balances, stakes,
reputation, open disputes, rules, operators, namespaces) with no I/O, so the coordinator and
every auditor compute the same state from the same log. The fold checks authority as well as
arithmetic: signed requests for every move of money, the settlement rule
(:func:`~veriml.ledger.settlement.settle`) after every verdict, and the bond map
(:class:`~veriml.ledger.bonds.BondMap`) of every ``state`` entry.
"""

from veriml.ledger.bonds import BondMap, BondProof, bond_leaf
from veriml.ledger.entries import (
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
    namespace_of,
    parse_entry,
)
from veriml.ledger.rules import Rules
from veriml.ledger.settlement import Parties, settle
from veriml.ledger.state import Account, LedgerError, LedgerState, OpenDispute, fold

__all__ = [
    "Account",
    "BeaconEntry",
    "BondMap",
    "BondProof",
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
    "NamespaceEntry",
    "NodeEntry",
    "OpenDispute",
    "Parties",
    "ReputationEntry",
    "RewardEntry",
    "Rules",
    "SlashEntry",
    "StakeEntry",
    "StateEntry",
    "UnstakeEntry",
    "bond_leaf",
    "fold",
    "namespace_of",
    "parse_entry",
    "settle",
]
