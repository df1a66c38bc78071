"""Repositories: the only code that speaks SQL to the coordinator's tables (``db.py``).

Every write is safe with several coordinator replicas on one database: uniqueness comes from
constraints (a losing insert re-reads the winner), counters and heartbeats are single
conditional ``UPDATE`` statements, and a pending model row is finished by whoever claims it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator import db
from veriml.core.digest import Digest
from veriml.core.errors import Conflict, FormatError, NotFound, StorageError
from veriml.protocol.messages import NodeDescriptor

__all__ = [
    "CLAIM_TIMEOUT",
    "ModelRecord",
    "ModelRepository",
    "NodeRepository",
    "NodeRow",
    "NonceRepository",
]

# A pending model row whose claim is older than this was left by a crashed replica.
CLAIM_TIMEOUT = 60.0


def _storage(exc: SQLAlchemyError, what: str) -> StorageError:
    return StorageError(f"coordinator database failed ({what})", reason=str(exc).split("\n")[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRecord:
    """A registered model (or, with ``log_index`` None, one being registered)."""

    digest: Digest
    name: str
    version: str
    publisher_key_id: str
    publisher_key: str
    files_digest: Digest
    signature: Digest
    size: int
    manifest: tuple[dict[str, Any], ...]
    io: dict[str, Any]
    registered_at: str
    task: str | None = None
    license: str | None = None
    card: dict[str, Any] | None = None
    parents: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    log_index: int | None = None
    submitted_by: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_row(self) -> dict[str, Any]:
        return {
            "digest": self.digest.to_text(),
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "license": self.license,
            "publisher_key_id": self.publisher_key_id,
            "publisher_key": self.publisher_key,
            "files_digest": self.files_digest.to_text(),
            "signature": self.signature.to_text(),
            "size": self.size,
            "manifest": list(self.manifest),
            "io": self.io,
            "card": self.card,
            "parents": list(self.parents),
            "datasets": list(self.datasets),
            "log_index": self.log_index,
            "registered_at": self.registered_at,
            "submitted_by": self.submitted_by,
        }

    @classmethod
    def from_row(cls, row: Any) -> ModelRecord:
        m = row._mapping
        return cls(
            digest=Digest.from_text(m["digest"]),
            name=m["name"],
            version=m["version"],
            task=m["task"],
            license=m["license"],
            publisher_key_id=m["publisher_key_id"],
            publisher_key=m["publisher_key"],
            files_digest=Digest.from_text(m["files_digest"]),
            signature=Digest.from_text(m["signature"]),
            size=int(m["size"]),
            manifest=tuple(m["manifest"]),
            io=dict(m["io"]),
            card=m["card"],
            parents=tuple(m["parents"]),
            datasets=tuple(m["datasets"]),
            log_index=m["log_index"],
            registered_at=m["registered_at"],
            submitted_by=m["submitted_by"],
        )

    def to_json(self) -> dict[str, Any]:
        """The public form (``GET /v1/models/{ref}`` adds ``lineage``)."""
        return {
            "digest": self.digest.to_text(),
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "license": self.license,
            "publisher": {"key_id": self.publisher_key_id, "public_key": self.publisher_key},
            "files_digest": self.files_digest.to_text(),
            "signature": self.signature.to_text(),
            "size": self.size,
            "files": list(self.manifest),
            "io": self.io,
            "card": self.card,
            "parents": list(self.parents),
            "datasets": list(self.datasets),
            "log_index": self.log_index,
            "registered_at": self.registered_at,
            "submitted_by": self.submitted_by,
        }


_DONE = db.models.c.log_index.is_not(None)


class ModelRepository:
    """Models by digest, ``name``, ``name@version``; search; pending-row registration."""

    def __init__(self, engine: Engine, *, cache_size: int = 1024) -> None:
        self._engine = engine
        # A registered model never changes, so digest and name@version lookups are cached
        # (a bare name is not: its latest version moves).
        self._cache: dict[str, ModelRecord] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _remember(self, key: str, record: ModelRecord | None) -> ModelRecord | None:
        if record is not None and record.log_index is not None:
            with self._lock:
                if len(self._cache) >= self._cache_size:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[key] = record
        return record

    def _one(self, where: Any, *, pending: bool = False) -> ModelRecord | None:
        query = sa.select(db.models).where(where)
        if not pending:
            query = query.where(_DONE)
        query = query.order_by(db.models.c.registered_at.desc()).limit(1)
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise _storage(exc, "read model") from exc
        return None if row is None else ModelRecord.from_row(row)

    def get(self, digest: Digest, *, pending: bool = False) -> ModelRecord | None:
        key = digest.to_text()
        if key in self._cache:
            return self._cache[key]
        return self._remember(key, self._one(db.models.c.digest == key, pending=pending))

    def resolve(self, ref: str) -> ModelRecord:
        """A registered model by ``sha256:...``, ``name@version`` or ``name`` (latest)."""
        if ref.startswith("sha256:"):
            found = self.get(Digest.from_text(ref))
        elif "@" in ref:
            name, _, version = ref.rpartition("@")
            found = self._cache.get(ref) or self._remember(
                ref, self._one((db.models.c.name == name) & (db.models.c.version == version))
            )
        else:
            found = self._one(db.models.c.name == ref)
        if found is None:
            raise NotFound("no such model", model=ref[:300])
        return found

    def search(
        self,
        *,
        name: str | None = None,
        task: str | None = None,
        publisher: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[ModelRecord]:
        """Registered models, newest first; ``name`` matches a substring."""
        query = sa.select(db.models).where(_DONE)
        if name:
            escaped = name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(db.models.c.name.like(f"%{escaped}%", escape="\\"))
        if task:
            query = query.where(db.models.c.task == task)
        if publisher:
            query = query.where(db.models.c.publisher_key_id == publisher)
        query = query.order_by(db.models.c.registered_at.desc(), db.models.c.digest)
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(query.limit(limit).offset(offset)).all()
        except SQLAlchemyError as exc:
            raise _storage(exc, "search models") from exc
        return [ModelRecord.from_row(r) for r in rows]

    def count(self) -> int:
        try:
            with self._engine.connect() as conn:
                query = sa.select(sa.func.count()).select_from(db.models).where(_DONE)
                return int(conn.execute(query).scalar_one())
        except SQLAlchemyError as exc:
            raise _storage(exc, "count models") from exc

    def reserve(self, record: ModelRecord, *, now: float | None = None) -> ModelRecord:
        """Insert ``record`` as pending, claimed by the caller, and return it.

        If the digest is already there, return that row instead (registered, or pending:
        the caller then tries :meth:`claim`). ``name@version`` bound to another digest is
        :class:`Conflict`.
        """
        row = record.to_row() | {"log_index": None, "claimed_at": now or time.time()}
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(db.models).values(**row))
            return record
        except IntegrityError:
            pass
        except SQLAlchemyError as exc:
            raise _storage(exc, "reserve model") from exc
        existing = self.get(record.digest, pending=True)
        if existing is not None:
            return existing
        raise Conflict(
            "model name@version is already bound to another digest",
            model=record.ref,
            digest=record.digest.to_text(),
        )

    def claim(self, digest: Digest, *, now: float | None = None) -> bool:
        """Take over a pending row whose claim expired; True if this caller now holds it."""
        now = now or time.time()
        query = (
            sa.update(db.models)
            .where(
                (db.models.c.digest == digest.to_text())
                & db.models.c.log_index.is_(None)
                & (db.models.c.claimed_at < now - CLAIM_TIMEOUT)
            )
            .values(claimed_at=now)
        )
        try:
            with self._engine.begin() as conn:
                return conn.execute(query).rowcount == 1
        except SQLAlchemyError as exc:
            raise _storage(exc, "claim model") from exc

    def complete(self, digest: Digest, log_index: int) -> None:
        """Record the log index of a pending row: the model is now registered."""
        query = (
            sa.update(db.models)
            .where((db.models.c.digest == digest.to_text()) & db.models.c.log_index.is_(None))
            .values(log_index=log_index, claimed_at=None)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise _storage(exc, "complete model") from exc

    def release(self, digest: Digest) -> None:
        """Drop a pending row whose log append failed, so a retry starts afresh."""
        query = sa.delete(db.models).where(
            (db.models.c.digest == digest.to_text()) & db.models.c.log_index.is_(None)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise _storage(exc, "release model") from exc


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
        """Record a heartbeat newer than the last (an older or equal one is :class:`Conflict`)."""
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
                raise NotFound("no such node", node=node_id)
            raise Conflict("heartbeat is not newer than the last one", node=node_id)

    def all(self) -> list[NodeRow]:
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(sa.select(db.nodes).order_by(db.nodes.c.node_id)).all()
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
    """Descriptor nonces seen, kept for twice the freshness window (then they are stale)."""

    def __init__(self, engine: Engine, *, keep: float) -> None:
        self._engine = engine
        self._keep = keep

    def use(self, nonce: str, *, now: float | None = None) -> None:
        """Record ``nonce``; a nonce seen before is :class:`Conflict` (a replay)."""
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
            raise Conflict("descriptor nonce was already used (replay)", nonce=nonce) from exc
        except SQLAlchemyError as exc:
            raise _storage(exc, "record nonce") from exc
