"""Repositories: the only code that speaks SQL to the coordinator's tables (``db.py``).

Models live in :mod:`veriml.coordinator.db.models` (re-exported here); nodes and descriptor
nonces here.

Every write is safe with several coordinator replicas on one database: uniqueness comes from
constraints (a losing insert re-reads the winner), counters and heartbeats are single
conditional ``UPDATE`` statements, and a pending model row is finished by whoever claims it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator.db import tables as db
from veriml.coordinator.db.models import ModelRecord, ModelRepository, storage_error
from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, FormatError, NotFoundError, StorageError
from veriml.protocol.messages import NodeDescriptor

__all__ = [
    "ModelRecord",
    "ModelRepository",
    "NodeRepository",
    "NodeRow",
    "NonceRepository",
]

_storage = storage_error


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRow:
    """What the scheduler needs to know about a registered node."""

    node_id: str
    operator: str
    endpoint: str
    public_key: str
    log_index: int
    active: int
    queued: int
    capacity: int
    cached: tuple[str, ...]
    models: tuple[str, ...]
    last_seen: float
    failed: bool = False
    engines: tuple[str, ...] = ("onnxruntime",)
    """The runtimes the node's descriptor lists (``llama.cpp`` runs GGUF models)."""

    def serves(self, model: Digest) -> bool:
        return "*" in self.models or model.to_text() in self.models

    def is_live(self, now: float, live_after: float) -> bool:
        return not self.failed and now - self.last_seen <= live_after

    def to_json(self, *, live: bool) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "operator": self.operator,
            "endpoint": self.endpoint,
            "public_key": self.public_key,
            "log_index": self.log_index,
            "models": list(self.models),
            "load": {"active": self.active, "queued": self.queued, "capacity": self.capacity},
            "cached": list(self.cached),
            "last_seen": self.last_seen,
            "live": live,
        }

    @classmethod
    def from_row(cls, row: Any) -> NodeRow:
        m = row._mapping
        failed_at = m["failed_at"]
        descriptor_models = m["descriptor"].get("models", ["*"])
        return cls(
            node_id=m["node_id"],
            operator=m["operator"],
            endpoint=m["endpoint"],
            public_key=m["public_key"],
            log_index=int(m["log_index"]),
            active=int(m["active"]),
            queued=int(m["queued"]),
            capacity=int(m["capacity"]),
            cached=tuple(m["cached"]),
            models=tuple(descriptor_models),
            last_seen=float(m["last_seen"]),
            failed=failed_at is not None and failed_at >= m["last_seen"],
            engines=tuple(m["descriptor"].get("engines", ["onnxruntime"])),
        )


class NodeRepository:
    """Registered nodes, heartbeats and the load counters the scheduler keeps."""

    def __init__(self, engine: Engine, *, live_after: float) -> None:
        self._engine = engine
        self.live_after = live_after

    def register(
        self,
        descriptor: NodeDescriptor,
        envelope: dict[str, Any],
        log_index: int,
        *,
        now: float | None = None,
    ) -> None:
        """Insert or replace the node's row with this (already logged) descriptor."""
        now = now or time.time()
        values = {
            "operator": descriptor.operator,
            "endpoint": descriptor.endpoint,
            "descriptor": descriptor.to_json() | {"envelope": envelope},
            "public_key": descriptor.public_key,
            "log_index": log_index,
            "registered_at": descriptor.issued_at,
            "last_seen": now,
            "failed_at": None,
            "active": 0,
            "queued": 0,
        }
        where = db.nodes.c.node_id == descriptor.node_id
        insert = sa.insert(db.nodes).values(
            node_id=descriptor.node_id, capacity=1, cached=[], **values
        )
        try:
            for _ in range(3):  # a concurrent first registration may win the insert
                with self._engine.begin() as conn:
                    if conn.execute(sa.update(db.nodes).where(where).values(**values)).rowcount:
                        return
                try:
                    with self._engine.begin() as conn:
                        conn.execute(insert)
                    return
                except IntegrityError:
                    continue
        except SQLAlchemyError as exc:
            raise _storage(exc, "register node") from exc
        raise StorageError("node registration kept conflicting", node=descriptor.node_id)

    def get(self, node_id: str) -> NodeRow | None:
        try:
            with self._engine.connect() as conn:
                row = conn.execute(sa.select(db.nodes).where(db.nodes.c.node_id == node_id)).first()
        except SQLAlchemyError as exc:
            raise _storage(exc, "read node") from exc
        return None if row is None else NodeRow.from_row(row)

    def heartbeat(
        self,
        node_id: str,
        *,
        issued_at: float,
        active: int,
        queued: int,
        capacity: int,
        cached: Sequence[str],
        now: float | None = None,
    ) -> None:
        """Record a heartbeat newer than the last (an older or equal one is
        :class:`ConflictError`)."""
        last = db.nodes.c.heartbeat_at
        query = (
            sa.update(db.nodes)
            .where((db.nodes.c.node_id == node_id) & (last.is_(None) | (last < issued_at)))
            .values(
                heartbeat_at=issued_at,
                last_seen=now or time.time(),
                active=active,
                queued=queued,
                capacity=capacity,
                cached=list(cached),
            )
        )
        try:
            with self._engine.begin() as conn:
                updated = conn.execute(query).rowcount
        except SQLAlchemyError as exc:
            raise _storage(exc, "heartbeat") from exc
        if not updated:
            if self.get(node_id) is None:
                raise NotFoundError("no such node", node=node_id)
            raise ConflictError("heartbeat is not newer than the last one", node=node_id)

    def all(self, *, limit: int | None = None, offset: int = 0) -> list[NodeRow]:
        """Registered nodes by id; at most ``limit`` of them after the first ``offset``."""
        query = sa.select(db.nodes).order_by(db.nodes.c.node_id).limit(limit).offset(offset)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise _storage(exc, "list nodes") from exc
        return [NodeRow.from_row(r) for r in rows]

    def live_nodes(self, model: Digest, *, now: float | None = None) -> list[NodeRow]:
        """Live nodes that serve ``model``: least loaded first, those with it cached first
        among equals."""
        now = now or time.time()
        query = sa.select(db.nodes).where(db.nodes.c.last_seen >= now - self.live_after)
        try:
            with self._engine.connect() as conn:
                rows = [NodeRow.from_row(r) for r in conn.execute(query).all()]
        except SQLAlchemyError as exc:
            raise _storage(exc, "live nodes") from exc
        text = model.to_text()
        eligible = [r for r in rows if r.is_live(now, self.live_after) and r.serves(model)]
        return sorted(
            eligible,
            key=lambda r: ((r.active + r.queued) / max(r.capacity, 1), text not in r.cached),
        )

    def count_live(self, *, now: float | None = None) -> int:
        now = now or time.time()
        return sum(1 for r in self.all() if r.is_live(now, self.live_after))

    def mark_failed(self, node_id: str, *, now: float | None = None) -> None:
        """Take the node out of scheduling until its next heartbeat."""
        query = (
            sa.update(db.nodes)
            .where(db.nodes.c.node_id == node_id)
            .values(failed_at=now or time.time())
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise _storage(exc, "mark node failed") from exc

    def adjust_active(self, node_id: str, delta: int) -> None:
        """Add ``delta`` to the node's active job count (never below zero), atomically."""
        new = db.nodes.c.active + delta
        query = (
            sa.update(db.nodes)
            .where(db.nodes.c.node_id == node_id)
            .values(active=sa.case((new < 0, 0), else_=new))
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise _storage(exc, "adjust node load") from exc


class NonceRepository:
    """Nonces seen (node descriptors' and signed requests'), kept for ``keep`` seconds: longer
    than any descriptor or request signature stays fresh, so a replay always meets its nonce."""

    def __init__(self, engine: Engine, *, keep: float) -> None:
        self._engine = engine
        self._keep = keep

    def use(self, nonce: str, *, now: float | None = None) -> None:
        """Record ``nonce``; a nonce seen before is :class:`ConflictError` (a replay)."""
        if not nonce or len(nonce) > 128:
            raise FormatError("descriptor nonce must be 1 to 128 characters")
        now = now or time.time()
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.delete(db.descriptor_nonces).where(
                        db.descriptor_nonces.c.seen_at < now - self._keep
                    )
                )
                conn.execute(sa.insert(db.descriptor_nonces).values(nonce=nonce, seen_at=now))
        except IntegrityError as exc:
            raise ConflictError("descriptor nonce was already used (replay)", nonce=nonce) from exc
        except SQLAlchemyError as exc:
            raise _storage(exc, "record nonce") from exc
