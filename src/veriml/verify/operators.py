"""Operators behind an answer are distinct and bonded: the check a client runs on every answer
(docs/threat-model.md, property 1; docs/sdk.md, check ``bonds``).

A node counts as its **operator** (the account that signed its binding, checked when its
descriptor is opened). Distinct operators are what a quorum, a spot check and a prefill check
need, and they are real only if each costs something: the operator must be **bonded**, i.e.
hold at least the rules' minimum stake. The client cannot fold the whole log for that, so the
answer cites a ``state`` entry (the ledger's rules and the Merkle root of every account's
stake, recomputed by every auditor's fold) and carries a :class:`~veriml.ledger.bonds.BondProof`
per operator. :func:`check_operators`:

1. the state entry was logged before the answer's inference entry, and not long before its
   receipts were signed: at most the rules' ``unstake_delay`` (stake bonded then cannot have
   left the slashable state by the time the node answered);
2. each operator's stake proof leads to the state entry's bond root, with at least
   ``max(rules.min_stake, min_stake)``, where ``min_stake`` is the client's own floor (1 by
   default: a client never accepts an unbonded operator, even under rules that require none);
3. or, for a permissioned network, every operator is one the client pinned
   (``trusted_operators``): then no stake is needed.

Failures raise :class:`~veriml.errors.VerificationError` with ``check="bonds"``. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence

from veriml.core.errors import Check, FormatError, VerificationError
from veriml.core.timestamps import parse_time
from veriml.ledger.bonds import BondProof
from veriml.ledger.entries import StateEntry, parse_entry

__all__ = ["CLOCK_SKEW", "check_operators", "open_state_entry"]

CLOCK_SKEW = dt.timedelta(seconds=60)
"""How far a node's clock may be from the coordinator's."""


def open_state_entry(data: bytes) -> StateEntry:
    """A logged ``state`` entry from its bytes (``check="bonds"`` when it is not one)."""
    try:
        entry = parse_entry(data)
    except FormatError as exc:
        raise VerificationError(
            "the cited ledger state entry does not parse", check=Check.BONDS, reason=exc.message
        ) from exc
    if not isinstance(entry, StateEntry):
        raise VerificationError(
            "the cited log entry is not a ledger state entry", check=Check.BONDS
        )
    return entry


def check_operators(
    operators: Collection[str],
    *,
    state: StateEntry | None,
    state_index: int | None,
    entry_index: int,
    signed_at: str,
    proofs: Sequence[BondProof] = (),
    min_stake: int = 1,
    trusted_operators: Collection[str] | None = None,
) -> Mapping[str, int]:
    """Check that every operator in ``operators`` is bonded (module docstring); their stakes
    (``{}`` when the client pinned them instead).

    ``state`` is the cited state entry at log index ``state_index`` (already proven in the
    answer's tree); ``entry_index`` the answer's inference entry; ``signed_at`` the earliest
    ``started`` time of the answer's receipts.
    """
    wanted = set(operators)
    if trusted_operators is not None:
        # 3. A permissioned network: the client's own list stands in for stake.
        strangers = sorted(wanted - set(trusted_operators))
        if strangers:
            raise VerificationError(
                "an answering operator is not one this client trusts",
                check=Check.BONDS,
                operators=",".join(strangers)[:300],
            )
        return {}
    if state is None or state_index is None:
        raise VerificationError(
            "the answer cites no ledger state: the operators' stake cannot be checked",
            check=Check.BONDS,
        )
    # 1. The bond map is from before the answer was logged, and recent enough.
    if not state_index < entry_index:
        raise VerificationError(
            "the cited ledger state was logged after the answer",
            check=Check.BONDS,
            state=state_index,
            entry=entry_index,
        )
    try:
        signed = parse_time(signed_at, what="receipt time")
        committed = parse_time(state.at, what="state time")
    except FormatError as exc:
        raise VerificationError(
            "times cannot be read", check=Check.BONDS, reason=exc.message
        ) from exc
    delay = dt.timedelta(seconds=state.rules.unstake_delay)
    if committed > signed + CLOCK_SKEW or signed > committed + delay + CLOCK_SKEW:
        raise VerificationError(
            "the cited ledger state is not from when the nodes answered",
            check=Check.BONDS,
            state_at=state.at,
            signed_at=signed_at,
            unstake_delay=state.rules.unstake_delay,
        )
    # 2. Each operator's stake, proven against the bond root, at least the minimum.
    floor = max(state.rules.min_stake, min_stake)
    by_account: dict[str, BondProof] = {}
    for proof in proofs:
        by_account.setdefault(proof.account, proof)
    stakes: dict[str, int] = {}
    for operator in sorted(wanted):
        found = by_account.get(operator)
        if found is None:
            raise VerificationError(
                "an answering operator has no stake in the logged bond map",
                check=Check.BONDS,
                operator=operator,
            )
        found.check(state.root, state.size)
        if found.stake < floor:
            raise VerificationError(
                "an answering operator is not bonded",
                check=Check.BONDS,
                operator=operator,
                stake=found.stake,
                minimum=floor,
            )
        stakes[operator] = found.stake
    return stakes
