"""The ``inferences`` table, and the commit step that proves and stores answers in groups.

After its entry is in the log, an answer needs its inclusion proof at a published checkpoint
and a row in ``inferences``. Done one by one, every answer would pay a database commit (an
fsync) and two worker-thread hops; :class:`InferenceStore` lets answers that arrive while a
commit is running wait for the next one, so concurrent answers share one checkpoint read and
one transaction. Nothing waits for a timer: a lone answer is committed at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator import db
from veriml.core.digest import Digest
from veriml.core.errors import Conflict, Error, StorageError
from veriml.core.receipt import utc_now
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.log import Log
from veriml.tlog.note import Note

__all__ = ["Build", "InferenceStore", "StoredInference"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInference:
    """One row of ``inferences``: the answer as returned, and what identifies its request."""

    inference_id: str
    model: Digest
    policy: str
    request_digest: Digest
    log_index: int
    response: Mapping[str, Any]

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.inference_id,
            "model": self.model.to_text(),
            "policy": self.policy,
            "request_digest": self.request_digest.to_text(),
            "log_index": self.log_index,
            "response": dict(self.response),
            "created_at": utc_now(),
        }


# Given the log index, its inclusion proof and the signed checkpoint the proof is for, the row.
Build = Callable[[int, Sequence[bytes], bytes], StoredInference]
_Pending = tuple[int, Build, "asyncio.Future[StoredInference]"]


class InferenceStore:
    """Reads answers back; proves and stores new ones, concurrent ones in one transaction."""

    def __init__(self, engine: Engine, log: Log, *, publish_timeout: float = 30.0) -> None:
        self._engine = engine
        self._log = log
        self._publish_timeout = publish_timeout
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    def get(self, inference_id: str) -> tuple[Digest, dict[str, Any]] | None:
        """The stored request digest and answer of ``inference_id``, or None."""
        query = sa.select(db.inferences.c.request_digest, db.inferences.c.response).where(
            db.inferences.c.id == inference_id
        )
        try:
            with self._engine.connect() as conn:
                row = conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise StorageError("cannot read the inference", reason=type(exc).__name__) from exc
        if row is None:
            return None
        return Digest.from_text(row.request_digest), dict(row.response)

    async def commit(self, index: int, build: Build) -> StoredInference:
        """Prove log entry ``index``, build its row with ``build`` and store it."""
        future: asyncio.Future[StoredInference] = asyncio.get_running_loop().create_future()
        self._pending.append((index, build, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                results: list[StoredInference | Error]
                try:
                    results = await asyncio.to_thread(self._write, batch)
                except Error as exc:
                    results = [exc] * len(batch)
                except Exception as exc:  # never leave a caller waiting forever
                    failure = StorageError("storing the answer failed", reason=repr(exc)[:200])
                    results = [failure] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Error):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None

    def _published(self, index: int) -> tuple[bytes, int]:
        """The first published checkpoint covering ``index`` (a witnessed log may publish a
        little after it integrates)."""
        deadline = time.monotonic() + self._publish_timeout
        while True:
            note = self._log.checkpoint()
            size = Checkpoint.from_text(Note.from_bytes(note).text).size
            if size > index:
                return note, size
            if time.monotonic() > deadline:
                raise StorageError(
                    "the log has not published a checkpoint covering the entry",
                    index=index,
                    published=size,
                )
            time.sleep(0.01)

    def _write(self, batch: Sequence[_Pending]) -> list[StoredInference | Error]:
        note, size = self._published(max(index for index, _, _ in batch))
        results: list[StoredInference | Error] = []
        for index, build, _ in batch:
            try:
                results.append(build(index, self._log.inclusion_proof(index, size), note))
            except Error as exc:
                results.append(exc)
        rows = [r for r in results if isinstance(r, StoredInference)]
        try:
            self._insert(rows)
        except IntegrityError:
            # Someone stored one of these ids first: insert one by one to find out which.
            return [self._insert_one(r) if isinstance(r, StoredInference) else r for r in results]
        return results

    def _insert(self, rows: Sequence[StoredInference]) -> None:
        if not rows:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(db.inferences), [r.to_row() for r in rows])
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise StorageError("cannot store the inference", reason=type(exc).__name__) from exc

    def _insert_one(self, row: StoredInference) -> StoredInference | Error:
        try:
            self._insert([row])
        except IntegrityError:
            return Conflict("an inference with this id is already stored", id=row.inference_id)
        except Error as exc:
            return exc
        return row
