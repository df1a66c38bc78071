"""The model catalogue: registered models, the namespaces that own their names, and the
pending rows that register both.

A ``models`` row is inserted *pending* (``log_index`` NULL) before its log entry is appended:
it reserves the digest and (for a signed model) ``name@version`` across replicas (constraints
decide), readers never see it, and :meth:`ModelRepository.complete` records the index once the
entry is in the log. ``claimed_at`` lets exactly one replica finish a row a crashed replica left
pending.

A ``namespaces`` row works the same way: inserted pending by the registration of the first
model in a namespace (its ``model``), completed with the index of the ``namespace`` entry that
was logged in one group with that model's entry (docs/models.md, "Names").

Unsigned models (a hub whose operator allows them) own no name: their rows reserve only their
digest, and name lookups never return them.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator.db import tables as db
from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, NotFoundError, StorageError
from veriml.ledger.entries import namespace_of

__all__ = [
    "CLAIM_TIMEOUT",
    "ModelRecord",
    "ModelRepository",
    "NamespaceRecord",
    "NamespaceRepository",
]

# A pending model row whose claim is older than this was left by a crashed replica.
CLAIM_TIMEOUT = 60.0


def storage_error(exc: SQLAlchemyError, what: str) -> StorageError:
    return StorageError(f"coordinator database failed ({what})", reason=str(exc).split("\n")[0])


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelRecord:
    """A registered model (or, with ``log_index`` None, one being registered).

    An unsigned model has no publisher and no signature (all three None)."""

    digest: Digest
    name: str
    version: str
    publisher_key_id: str | None
    publisher_key: str | None
    files_digest: Digest
    signature: Digest | None
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
    def unsigned(self) -> bool:
        """No publisher signed it: reachable by digest only, marked wherever it is listed."""
        return self.publisher_key is None

    @property
    def namespace(self) -> str | None:
        """The namespace its name is in; None for an unsigned model (it owns no name)."""
        return None if self.unsigned else namespace_of(self.name)

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
            "signature": None if self.signature is None else self.signature.to_text(),
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
            signature=None if m["signature"] is None else Digest.from_text(m["signature"]),
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
        """The public form (``GET /v1/models/{ref}`` adds ``lineage`` and ``namespace``).
        An unsigned model says ``"unsigned": true`` and has ``publisher`` and ``signature``
        null."""
        return {
            "digest": self.digest.to_text(),
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "license": self.license,
            "publisher": None
            if self.unsigned
            else {"key_id": self.publisher_key_id, "public_key": self.publisher_key},
            "unsigned": self.unsigned,
            "files_digest": self.files_digest.to_text(),
            "signature": None if self.signature is None else self.signature.to_text(),
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
_SIGNED = db.models.c.publisher_key_id.is_not(None)


class ModelRepository:
    """Models by digest, ``name``, ``name@version``; search; pending-row registration."""

    def __init__(self, engine: Engine, *, cache_size: int = 1024) -> None:
        self._engine = engine
        # A registered signed model never changes, so digest and name@version lookups are
        # cached (a bare name is not: its latest version moves; nor is an unsigned model: its
        # publisher may register it signed, which replaces the row).
        self._cache: dict[str, ModelRecord] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _remember(self, key: str, record: ModelRecord | None) -> ModelRecord | None:
        if record is not None and record.log_index is not None and not record.unsigned:
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
        """A registered model by ``sha256:...``, ``name@version`` or ``name`` (latest).

        Names resolve to signed models only: an unsigned model is reachable by digest alone.
        """
        if ref.startswith("sha256:"):
            found = self.get(Digest.from_text(ref))
        elif "@" in ref:
            name, _, version = ref.rpartition("@")
            named = (db.models.c.name == name) & (db.models.c.version == version) & _SIGNED
            found = self._cache.get(ref) or self._remember(ref, self._one(named))
        else:
            found = self._one((db.models.c.name == ref) & _SIGNED)
        if found is None:
            raise NotFoundError("no such model", model=ref[:300])
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
        the caller then tries :meth:`claim`), except that a signed record takes over the row
        of the same model registered *unsigned*: the row becomes ``record``, pending, and
        ``record`` is returned (an unsigned upload cannot squat its publisher's model; the
        caller restores the old row with :meth:`restore` if the registration fails). A signed
        model's ``name@version`` bound to another digest is :class:`ConflictError`.
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
        if existing is None:
            raise self._taken(record)
        if existing.unsigned and existing.log_index is not None and not record.unsigned:
            upgrade = (
                sa.update(db.models)
                .where(
                    (db.models.c.digest == record.digest.to_text())
                    & db.models.c.publisher_key_id.is_(None)
                    & _DONE
                )
                .values(**row)
            )
            try:
                with self._engine.begin() as conn:
                    if conn.execute(upgrade).rowcount == 1:
                        return record
            except IntegrityError as exc:
                raise self._taken(record) from exc
            except SQLAlchemyError as exc:
                raise storage_error(exc, "reserve model") from exc
            return self.reserve(record, now=now)  # another replica took it over first
        return existing

    @staticmethod
    def _taken(record: ModelRecord) -> ConflictError:
        return ConflictError(
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

    def restore(self, previous: ModelRecord) -> None:
        """Put back the registered row ``previous`` (an unsigned model) that a failed signed
        registration of the same model took over (:meth:`reserve`)."""
        query = (
            sa.update(db.models)
            .where(
                (db.models.c.digest == previous.digest.to_text()) & db.models.c.log_index.is_(None)
            )
            .values(**previous.to_row(), claimed_at=None)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise storage_error(exc, "restore model") from exc

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


@dataclass(frozen=True, slots=True, kw_only=True)
class NamespaceRecord:
    """Who owns a namespace: ``owner`` (key id) with ``owner_key`` (PEM), claimed by the
    registration of ``model``; ``log_index`` is the ``namespace`` entry's (None: pending)."""

    namespace: str
    owner: str
    owner_key: str
    model: Digest
    log_index: int | None = None

    def to_row(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "owner": self.owner,
            "owner_key": self.owner_key,
            "model": self.model.to_text(),
            "log_index": self.log_index,
        }

    @classmethod
    def from_row(cls, row: Any) -> NamespaceRecord:
        m = row._mapping
        return cls(
            namespace=m["namespace"],
            owner=m["owner"],
            owner_key=m["owner_key"],
            model=Digest.from_text(m["model"]),
            log_index=m["log_index"],
        )

    def to_json(self) -> dict[str, Any]:
        return {"name": self.namespace, "owner": self.owner, "log_index": self.log_index}


class NamespaceRepository:
    """Namespace owners; a claim is reserved pending before its entry is logged."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._cache: dict[str, NamespaceRecord] = {}  # completed claims never change
        self._lock = threading.Lock()

    def get(self, namespace: str) -> NamespaceRecord | None:
        """The namespace's owner, pending claims included (``log_index`` None)."""
        cached = self._cache.get(namespace)
        if cached is not None:
            return cached
        query = sa.select(db.namespaces).where(db.namespaces.c.namespace == namespace)
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise storage_error(exc, "read namespace") from exc
        if row is None:
            return None
        record = NamespaceRecord.from_row(row)
        if record.log_index is not None:
            with self._lock:
                self._cache[namespace] = record
        return record

    def reserve(self, record: NamespaceRecord) -> NamespaceRecord:
        """Insert the claim ``record`` as pending and return it; if the namespace is already
        claimed (pending or logged), return that claim instead."""
        for _ in range(3):  # the claim found may be released before it is read
            try:
                with self._engine.begin() as conn:
                    conn.execute(sa.insert(db.namespaces).values(**record.to_row()))
                return record
            except IntegrityError:
                pass
            except SQLAlchemyError as exc:
                raise storage_error(exc, "reserve namespace") from exc
            existing = self.get(record.namespace)
            if existing is not None:
                return existing
        raise StorageError("namespace claims kept conflicting", namespace=record.namespace)

    def complete(self, namespace: str, log_index: int) -> None:
        """Record the index of the logged ``namespace`` entry."""
        query = (
            sa.update(db.namespaces)
            .where((db.namespaces.c.namespace == namespace) & db.namespaces.c.log_index.is_(None))
            .values(log_index=log_index)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise storage_error(exc, "complete namespace") from exc

    def release(self, namespace: str, model: Digest) -> None:
        """Drop ``model``'s pending claim (its registration failed before the log append)."""
        query = sa.delete(db.namespaces).where(
            (db.namespaces.c.namespace == namespace)
            & (db.namespaces.c.model == model.to_text())
            & db.namespaces.c.log_index.is_(None)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise storage_error(exc, "release namespace") from exc
