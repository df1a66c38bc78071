"""Open disputes in the database, so a coordinator restart resumes them (docs/verification.md,
"Persistence").

The ``disputes`` table (:mod:`veriml.coordinator.db`) holds one row per open dispute, written
just before its ``challenge`` entry is appended and deleted once its verdict is: everything
needed to bring the dispute back in another process. The engine
(:mod:`veriml.coordinator.disputes`) writes a row at each move (the reveals recorded so far and
the move it asks now); on start-up it claims the rows no live replica holds and replays them.

A row belongs to one replica at a time: ``owner`` (a random id per process) and
``lease_until`` (Unix seconds). The owner renews its leases while it drives the disputes and
gives them up when it shuts down; any replica claims a row whose lease has run out, with one
``UPDATE ... WHERE lease_until < now`` so two replicas never claim the same row. The unique
``claim`` column refuses a second dispute of one claim even across replicas.

All methods block (SQL); the engine calls them in worker threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator import db
from veriml.coordinator.dispute_parties import Claim
from veriml.coordinator.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Conflict, StorageError
from veriml.core.receipt import TraceCommitment

__all__ = ["DisputeRecord", "DisputeStore", "PartyRecord", "answered_at"]

Reveal = tuple[int, Digest, Digest]


@dataclass(frozen=True, slots=True)
class PartyRecord:
    """One side as stored: its claim and, for a node, how to reach it."""

    claim: Claim
    node: Candidate | None = None
    """None for a remote challenger (it moves through HTTP)."""

    def to_json(self) -> dict[str, Any]:
        node = self.node
        return {
            "claim": self.claim.to_json(),
            "node": None
            if node is None
            else {
                "node_id": node.node_id,
                "operator": node.operator,
                "endpoint": node.endpoint,
                "public_key": node.public_key,
                "log_index": node.log_index,
            },
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PartyRecord:
        raw = obj["claim"]
        trace = raw.get("trace")
        claim = Claim(
            account=str(raw["account"]),
            outputs={str(k): Digest.from_text(str(v)) for k, v in raw["outputs"].items()},
            trace=None
            if trace is None
            else TraceCommitment(Digest.from_text(str(trace["root"])), int(trace["size"])),
            node=None if raw.get("node") is None else str(raw["node"]),
        )
        node = obj.get("node")
        return cls(
            claim,
            None
            if node is None
            else Candidate(
                node_id=str(node["node_id"]),
                operator=str(node["operator"]),
                endpoint=str(node["endpoint"]),
                public_key=str(node["public_key"]),
                log_index=int(node["log_index"]),
                last_seen=0.0,
            ),
        )


@dataclass(slots=True, kw_only=True)
class DisputeRecord:
    """A row of ``disputes``: one open dispute, enough to resume it."""

    id: str
    inference: str
    defendant: PartyRecord
    challenger: PartyRecord
    claim: Digest
    receipt: Envelope
    model: Digest
    mode: str
    policy: str
    inputs: Mapping[str, Digest]
    opened: int | None = None
    reveals: list[Reveal] = field(default_factory=list)
    move: dict[str, Any] | None = None
    rounds: int = 0
    messages: int = 0

    def to_row(self, *, owner: str, lease_until: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "inference": self.inference,
            "defendant": self.defendant.claim.account,
            "challenger": self.challenger.claim.account,
            "claim": self.claim.to_text(),
            "receipt": self.receipt.to_json(),
            "model": self.model.to_text(),
            "mode": self.mode,
            "policy": self.policy,
            "inputs": {name: d.to_text() for name, d in sorted(self.inputs.items())},
            "parties": {
                "defendant": self.defendant.to_json(),
                "challenger": self.challenger.to_json(),
            },
            "opened": self.opened,
            "reveals": _reveals_json(self.reveals),
            "move": self.move,
            "rounds": self.rounds,
            "messages": self.messages,
            "created_at": time.time(),
            "owner": owner,
            "lease_until": lease_until,
        }

    @classmethod
    def from_row(cls, row: Any) -> DisputeRecord:
        parties = row.parties
        return cls(
            id=row.id,
            inference=row.inference,
            defendant=PartyRecord.from_json(parties["defendant"]),
            challenger=PartyRecord.from_json(parties["challenger"]),
            claim=Digest.from_text(row.claim),
            receipt=Envelope.from_json(row.receipt),
            model=Digest.from_text(row.model),
            mode=row.mode,
            policy=row.policy,
            inputs={str(k): Digest.from_text(str(v)) for k, v in row.inputs.items()},
            opened=row.opened,
            reveals=[
                (int(i), Digest.from_text(str(d)), Digest.from_text(str(c)))
                for i, d, c in row.reveals
            ],
            move=row.move,
            rounds=row.rounds,
            messages=row.messages,
        )


def _reveals_json(reveals: Sequence[Reveal]) -> list[list[Any]]:
    return [[i, d.to_text(), c.to_text()] for i, d, c in reveals]


def _failed(exc: SQLAlchemyError, what: str) -> StorageError:
    return StorageError(f"cannot {what} (disputes table)", reason=str(exc)[:200])


class DisputeStore:
    """The ``disputes`` table for one coordinator process (``owner``), module docstring."""

    def __init__(self, engine: Engine, *, owner: str, lease: float) -> None:
        self._engine = engine
        self.owner = owner
        self.lease = lease
        self._table = db.disputes

    def insert(self, record: DisputeRecord) -> None:
        """Write the row of a dispute about to be logged; :class:`Conflict` when a dispute
        of the same claim is open (on this or another replica)."""
        row = record.to_row(owner=self.owner, lease_until=time.time() + self.lease)
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(self._table).values(**row))
        except IntegrityError as exc:
            raise Conflict(
                "a dispute of this receipt with this claim is already open",
                claim=record.claim,
            ) from exc
        except SQLAlchemyError as exc:
            raise _failed(exc, "record the dispute") from exc

    def update(self, dispute: str, **values: Any) -> None:
        """Set ``opened``, ``reveals`` (as :data:`Reveal` tuples), ``move``, ``rounds`` or
        ``messages`` of a row; the lease is renewed with it."""
        if "reveals" in values:
            values["reveals"] = _reveals_json(values["reveals"])
        values["lease_until"] = time.time() + self.lease
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(self._table)
                    .where(self._table.c.id == dispute, self._table.c.owner == self.owner)
                    .values(**values)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "record the dispute's move") from exc

    def delete(self, dispute: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(self._table).where(self._table.c.id == dispute))
        except SQLAlchemyError as exc:
            raise _failed(exc, "remove a settled dispute") from exc

    def ids(self) -> set[str]:
        """Every stored dispute's id (whoever drives it)."""
        try:
            with self._engine.connect() as conn:
                return set(conn.execute(sa.select(self._table.c.id)).scalars())
        except SQLAlchemyError as exc:
            raise _failed(exc, "list disputes") from exc

    def claim_due(self, *, now: float | None = None) -> list[DisputeRecord]:
        """Take over every row whose lease has run out (a restart, a replica that died) and
        return them, oldest first."""
        current = time.time() if now is None else now
        table = self._table
        claimed: list[DisputeRecord] = []
        try:
            with self._engine.connect() as conn:
                due = list(
                    conn.execute(
                        sa.select(table.c.id)
                        .where(table.c.lease_until < current)
                        .order_by(table.c.created_at)
                    ).scalars()
                )
            for dispute in due:
                with self._engine.begin() as conn:
                    taken = conn.execute(
                        sa.update(table)
                        .where(table.c.id == dispute, table.c.lease_until < current)
                        .values(owner=self.owner, lease_until=current + self.lease)
                    )
                    if taken.rowcount != 1:
                        continue  # another replica was first
                    row = conn.execute(sa.select(table).where(table.c.id == dispute)).one()
                claimed.append(DisputeRecord.from_row(row))
        except SQLAlchemyError as exc:
            raise _failed(exc, "resume disputes") from exc
        return claimed

    def renew(self, disputes: Sequence[str]) -> None:
        """Extend this process's leases on ``disputes`` (it still drives them)."""
        if not disputes:
            return
        table = self._table
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(table)
                    .where(table.c.id.in_(list(disputes)), table.c.owner == self.owner)
                    .values(lease_until=time.time() + self.lease)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "renew dispute leases") from exc

    def release(self) -> None:
        """Give up this process's leases (shutting down): the next start resumes at once."""
        table = self._table
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(table).where(table.c.owner == self.owner).values(lease_until=0.0)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "release dispute leases") from exc


def answered_at(engine: Engine, inference: str) -> str | None:
    """When the coordinator recorded the answer ``inference`` (the ``inferences`` row's
    ``created_at``, written just before its log entry): where a challenge window without a
    ``final_after`` starts. None when there is no such row."""
    table = db.inferences
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(table.c.created_at).where(table.c.id == inference)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise _failed(exc, "read the answer's time") from exc
    return None if found is None else str(found)
