"""The model catalogue: registered models and the pending rows that register them.

A ``models`` row is inserted *pending* (``log_index`` NULL) before its log entry is appended:
it reserves the digest and ``name@version`` across replicas (constraints decide), readers never
see it, and :meth:`ModelRepository.complete` records the index once the entry is in the log.
``claimed_at`` lets exactly one replica finish a row a crashed replica left pending.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator import db
from veriml.core.digest import Digest
from veriml.core.errors import Conflict, NotFound, StorageError

__all__ = ["CLAIM_TIMEOUT", "ModelRecord", "ModelRepository"]

# A pending model row whose claim is older than this was left by a crashed replica.
CLAIM_TIMEOUT = 60.0


def storage_error(exc: SQLAlchemyError, what: str) -> StorageError:
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

    @property
    def kind(self) -> str:
        """``"onnx"`` or ``"gguf"`` (an LLM, docs/llm.md): what runs it, from its ``io``."""
        kind = self.io.get("kind", "onnx")
        return kind if isinstance(kind, str) else "onnx"

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
            raise storage_error(exc, "read model") from exc
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
            raise storage_error(exc, "search models") from exc
        return [ModelRecord.from_row(r) for r in rows]

    def count(self) -> int:
        try:
            with self._engine.connect() as conn:
                query = sa.select(sa.func.count()).select_from(db.models).where(_DONE)
                return int(conn.execute(query).scalar_one())
        except SQLAlchemyError as exc:
            raise storage_error(exc, "count models") from exc

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
            raise storage_error(exc, "reserve model") from exc
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
            raise storage_error(exc, "claim model") from exc

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
            raise storage_error(exc, "complete model") from exc

    def release(self, digest: Digest) -> None:
        """Drop a pending row whose log append failed, so a retry starts afresh."""
        query = sa.delete(db.models).where(
            (db.models.c.digest == digest.to_text()) & db.models.c.log_index.is_(None)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise storage_error(exc, "release model") from exc
