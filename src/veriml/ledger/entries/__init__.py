"""The log's entry types (docs/network.md, "Log entries"; docs/ledger.md, "Entries").

The hub, registry and inference service log ``model``, ``namespace``, ``node`` and
``inference`` entries (:mod:`~veriml.ledger.entries.network`, with the ledger's ``state`` and
``beacon``); the ledger adds the entries that move money (``deposit``, ``stake``, ``unstake``,
``fee``, ``slash``, ``reward``, ``reputation``: :mod:`~veriml.ledger.entries.money`) and those
of disputes (``challenge``, ``verdict``: :mod:`~veriml.ledger.entries.disputes`). Every type
declares its members once (:mod:`~veriml.ledger.entries.base`), and is checked when built and
when parsed, so an entry's bytes are a function of its value.

Each entry is an RFC 8785 JSON object with a ``type``, at most 65,535 bytes (the tile entry
bundle limit). ``to_bytes`` writes the canonical bytes that are logged; :func:`parse_entry`
reads any of them back. Pure: no I/O.
"""

from __future__ import annotations

from veriml.core.canonical import parse_json_object
from veriml.core.errors import FormatError
from veriml.ledger.entries.base import AMOUNT_LIMIT, MAX_ENTRY_BYTES, BaseEntry
from veriml.ledger.entries.disputes import (
    MODES,
    REASONS,
    WINNERS,
    ChallengeEntry,
    DisputeVerdictEntry,
    Reason,
    Winner,
)
from veriml.ledger.entries.money import (
    DepositEntry,
    FeeEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
)
from veriml.ledger.entries.network import (
    REQUEST_MEMBERS,
    BeaconEntry,
    InferenceEntry,
    ModelEntry,
    NamespaceEntry,
    NodeEntry,
    StateEntry,
    namespace_of,
)

__all__ = [
    "AMOUNT_LIMIT",
    "MAX_ENTRY_BYTES",
    "MODES",
    "REASONS",
    "REQUEST_MEMBERS",
    "WINNERS",
    "BeaconEntry",
    "ChallengeEntry",
    "DepositEntry",
    "DisputeVerdictEntry",
    "Entry",
    "FeeEntry",
    "InferenceEntry",
    "LedgerEntry",
    "ModelEntry",
    "NamespaceEntry",
    "NodeEntry",
    "Reason",
    "ReputationEntry",
    "RewardEntry",
    "SlashEntry",
    "StakeEntry",
    "StateEntry",
    "UnstakeEntry",
    "Winner",
    "namespace_of",
    "parse_entry",
]

LedgerEntry = (
    DepositEntry
    | StakeEntry
    | UnstakeEntry
    | FeeEntry
    | ChallengeEntry
    | DisputeVerdictEntry
    | SlashEntry
    | RewardEntry
    | ReputationEntry
    | StateEntry
    | BeaconEntry
    | NamespaceEntry
)
"""The entries the ledger folds with a clock: each has an ``at`` time."""

Entry = ModelEntry | NodeEntry | InferenceEntry | LedgerEntry

_TYPES: dict[str, type[BaseEntry]] = {
    kind.TYPE: kind
    for kind in (
        ModelEntry,
        NodeEntry,
        InferenceEntry,
        DepositEntry,
        StakeEntry,
        UnstakeEntry,
        FeeEntry,
        ChallengeEntry,
        DisputeVerdictEntry,
        SlashEntry,
        RewardEntry,
        ReputationEntry,
        StateEntry,
        BeaconEntry,
        NamespaceEntry,
    )
}


def parse_entry(data: bytes) -> Entry:
    """Parse a logged entry. Unknown types and malformed members are :class:`FormatError`."""
    if len(data) > MAX_ENTRY_BYTES:
        raise FormatError("log entry is too large", size=len(data))
    obj = parse_json_object(data, what="log entry")
    kind = obj.get("type")
    parser = _TYPES.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise FormatError("unknown log entry type", type=str(kind)[:40])
    try:
        entry = parser.from_json(obj)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError("malformed log entry", type=kind, reason=repr(exc)[:200]) from exc
    return entry  # type: ignore[return-value]
