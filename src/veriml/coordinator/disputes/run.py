"""One dispute as the engine drives it, and as the database keeps it (docs/verification.md,
"Disputes" and "Persistence").

:class:`DisputeRun` is the live state (what ``GET /v1/disputes/{id}`` shows); :class:`Outcome`
is how a dispute ended before it is logged. :func:`record_of` turns a run into the row the
:class:`~veriml.coordinator.db.disputes.DisputeStore` keeps, so a restarted coordinator can
bring the run back: its parties reached again (a node by its id and endpoint, a remote
challenger through the same HTTP routes) and its bisection replayed from the recorded reveals.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from veriml.coordinator.db.disputes import DisputeRecord, PartyRecord
from veriml.coordinator.disputes.parties import (
    EMPTY_TRACE,
    AbsentParty,
    NodeParty,
    Party,
    RemoteParty,
)
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import ConflictError
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest
from veriml.core.timestamps import format_time
from veriml.verify.dispute import Reason
from veriml.verify.policy import DisputeRef, Winner

__all__ = ["DisputeRun", "Outcome", "husk", "record_of", "revived"]

Array = npt.NDArray[Any]
Reveal = tuple[int, Digest, Digest]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a dispute ended: the verdict entry's members, before it is logged."""

    winner: Winner
    reason: Reason
    node_index: int | None = None
    op_type: str | None = None
    inputs: Mapping[str, Digest] = field(default_factory=dict)
    claims: Mapping[str, Digest] = field(default_factory=dict)
    referee: Mapping[str, Digest] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class DisputeRun:
    """The live state of one dispute (what ``GET /v1/disputes/{id}`` shows).

    ``reveals`` are the rounds both parties answered, in order (index, defendant's digest,
    challenger's digest): replaying them into a fresh bisection gives back its state.
    ``opened`` is the log index of the ``challenge`` entry, ``log_index`` the verdict's."""

    id: str
    inference: str
    defendant: Party
    challenger: Party
    mode: str
    model: Digest
    inputs: Mapping[str, Array]
    receipt: Envelope
    claim: Digest
    policy: str = "none"
    status: str = "open"
    rounds: int = 0
    messages: int = 0
    reveals: list[Reveal] = field(default_factory=list)
    result: dict[str, Any] | None = None
    opened: int | None = None
    log_index: int | None = None
    winner: Winner | None = None
    task: asyncio.Task[None] | None = None
    settled: asyncio.Event = field(default_factory=asyncio.Event)

    def to_json(self) -> dict[str, Any]:
        query = None
        deadline = None
        if isinstance(self.challenger, RemoteParty) and self.status == "open":
            query = self.challenger.query
            if self.challenger.deadline is not None:
                deadline = format_time(dt.datetime.fromtimestamp(self.challenger.deadline, dt.UTC))
        return {
            "id": self.id,
            "status": self.status,
            "inference": self.inference,
            "defendant": self.defendant.claim.account,
            "challenger": self.challenger.claim.account,
            "mode": self.mode,
            "query": query,
            "deadline": deadline,
            "rounds": self.rounds,
            "messages": self.messages,
            "opened": self.opened,
            "result": self.result,
        }

    def ref(self) -> DisputeRef:
        """The verdict's reference to this (settled) dispute: its verdict and its challenge
        entry, both of which a client checks in the log."""
        if self.winner is None or self.log_index is None:
            raise ConflictError("the dispute is not settled", dispute=self.id)
        return DisputeRef(
            id=self.id,
            defendant=self.defendant.claim.account,
            challenger=self.challenger.claim.account,
            winner=self.winner,
            log_index=self.log_index,
            opened=self.opened,
        )


def _party_record(party: Party) -> PartyRecord:
    node = party.node if isinstance(party, NodeParty) else None
    return PartyRecord(party.claim, node)


def record_of(run: DisputeRun, *, move: dict[str, Any] | None = None) -> DisputeRecord:
    """The row that brings ``run`` back after a restart (its inputs by digest: the tensor
    store holds them)."""
    return DisputeRecord(
        id=run.id,
        inference=run.inference,
        defendant=_party_record(run.defendant),
        challenger=_party_record(run.challenger),
        claim=run.claim,
        receipt=run.receipt,
        model=run.model,
        mode=run.mode,
        policy=run.policy,
        inputs={name: tensor_digest(a) for name, a in run.inputs.items()},
        opened=run.opened,
        reveals=list(run.reveals),
        move=move,
        rounds=run.rounds,
        messages=run.messages,
    )


def revived(
    record: DisputeRecord,
    *,
    inputs: Mapping[str, Array],
    node_party: Callable[[PartyRecord, Candidate], Party],
) -> tuple[DisputeRun, tuple[TraceCommitment, TraceCommitment] | Outcome]:
    """``record`` as a run again (a remote challenger as a :class:`RemoteParty` that moves
    through the same routes, a node through ``node_party``), its rounds and reveals as
    recorded, and what the engine continues from: both commitments, or the outcome that was
    decided when it opened (a party that could not open)."""

    def party(stored: PartyRecord) -> Party:
        return RemoteParty(stored.claim) if stored.node is None else node_party(stored, stored.node)

    run = DisputeRun(
        id=record.id,
        inference=record.inference,
        defendant=party(record.defendant),
        challenger=party(record.challenger),
        mode=record.mode,
        model=record.model,
        inputs=inputs,
        receipt=record.receipt,
        claim=record.claim,
        policy=record.policy,
        rounds=record.rounds,
        messages=record.messages,
        reveals=list(record.reveals),
        opened=record.opened,
    )
    decided = (record.move or {}).get("decided")
    if isinstance(decided, Mapping):
        return run, Outcome(decided["winner"], decided["reason"])
    traces = (record.defendant.claim.trace, record.challenger.claim.trace)
    return run, (traces[0] or EMPTY_TRACE, traces[1] or EMPTY_TRACE)


def husk(record: DisputeRecord) -> DisputeRun:
    """A stored dispute that can no longer be driven (its model or inputs are gone), as a
    run that only settles."""
    return DisputeRun(
        id=record.id,
        inference=record.inference,
        defendant=AbsentParty(record.defendant.claim),
        challenger=AbsentParty(record.challenger.claim),
        mode=record.mode,
        model=record.model,
        inputs={},
        receipt=record.receipt,
        claim=record.claim,
        policy=record.policy,
        opened=record.opened,
    )
