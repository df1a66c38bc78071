"""The ``inferences`` table: pending rows before the log append, completed rows after it.

An answer is stored in two steps around its log entry, so that the log and the table always
converge, whatever crashes:

1. :meth:`InferenceStore.reserve` writes a **pending** row (``log_index`` NULL) holding the
   answer without its ``log`` member, the entry bytes and the entry's RFC 9162 leaf hash;
2. the caller appends the entry to the log;
3. :meth:`InferenceStore.commit` proves the entry's inclusion at a published checkpoint and
   completes the row (index, full answer). At the same checkpoint it proves every earlier
   entry the answer **cites** (the answering nodes' registrations, the ledger state whose
   bond map it was scheduled under, its model's provenance, the entries of its disputes) and
   adds them as ``evidence``; with the size of the last checkpoint the client saw
   (``X-Veriml-Log-Size``) it adds a consistency proof from it (``log.consistency``). So a
   client verifies an answer without another round trip, and a saved answer verifies offline.

A coordinator killed between 2 and 3 leaves a pending row whose entry is in the log.
:meth:`InferenceStore.recover` (on ``GET``, on a retry with the same ``Idempotency-Key``, and
at start-up via :meth:`InferenceStore.recover_all`) finds the entry by its leaf hash and
completes the row instead of running the request again. A row whose entry is *not* in the log
(killed between 1 and 2) is appended from the stored bytes by whoever claims it once its claim
is older than :data:`CLAIM_TIMEOUT`; before that its owner may still be appending it.

Writes are grouped: answers that arrive while a transaction is running wait for the next one,
so concurrent answers share one transaction (one fsync) and one checkpoint read. Nothing
waits for a timer: a lone answer is written at once.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator.db import tables as db
from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, Error, NotFoundError, StorageError
from veriml.core.receipt import utc_now
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.log import Log
from veriml.tlog.merkle import leaf_hash
from veriml.tlog.note import Note

__all__ = ["CLAIM_TIMEOUT", "InferenceStore", "PendingInference", "StoredInference"]

_log = logging.getLogger(__name__)

# A pending row whose claim is older than this was left by a crashed coordinator.
CLAIM_TIMEOUT = 60.0
# Cited entries (node registrations, state entries) kept in memory: they never change.
_ENTRY_CACHE = 4096
_CITES = "_cites"

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingInference:
    """An answer whose log entry is about to be appended: the answer without ``log``, and
    the entry (``InferenceEntry.to_bytes()``)."""

    inference_id: str
    model: Digest
    policy: str
    request_digest: Digest
    entry: bytes
    answer: Mapping[str, Any]
    cites: tuple[int, ...] = ()
    """Log indexes of earlier entries the answer relies on, proven beside it (``evidence``)."""
    known_size: int | None = None
    """The size of the client's last checkpoint: the answer proves consistency from it."""

    def to_row(self, now: float) -> dict[str, Any]:
        return {
            "id": self.inference_id,
            "model": self.model.to_text(),
            "policy": self.policy,
            "request_digest": self.request_digest.to_text(),
            "log_index": None,
            # The cited indexes ride along, so a recovered answer carries its evidence too.
            "response": dict(self.answer) | ({_CITES: list(self.cites)} if self.cites else {}),
            "created_at": utc_now(),
            "entry": self.entry.decode(),
            "leaf_hash": leaf_hash(self.entry).hex(),
            "claimed_at": now,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredInference:
    """A completed row: the answer as returned, and what identifies its request."""

    inference_id: str
    request_digest: Digest
    log_index: int
    response: Mapping[str, Any]


def _b64(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def with_log(
    answer: Mapping[str, Any],
    index: int,
    proof: Sequence[bytes],
    checkpoint: bytes,
    *,
    evidence: Sequence[Mapping[str, Any]] = (),
    consistency: tuple[int, Sequence[bytes]] | None = None,
) -> dict[str, Any]:
    """The full answer: ``answer`` with its ``log`` member (index, proof, checkpoint, and a
    consistency proof from the client's last size) and the ``evidence`` it cites."""
    log: dict[str, Any] = {
        "index": index,
        "inclusion_proof": _b64(proof),
        "checkpoint": checkpoint.decode(),
    }
    if consistency is not None:
        log["consistency"] = {"from": consistency[0], "proof": _b64(consistency[1])}
    full = dict(answer) | {"log": log}
    if evidence:
        full["evidence"] = list(evidence)
    return full


class _Group(Generic[T, R]):
    """Runs ``work(batch)`` in a worker thread for items submitted from the event loop;
    items submitted while a batch runs form the next batch. ``work`` returns one result (or
    :class:`Error`) per item, in order."""

    def __init__(self, work: Callable[[list[T]], list[R | Error]]) -> None:
        self._work = work
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if self._flusher is None:
            self._flusher = asyncio.ensure_future(self._flush())
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                results: list[R | Error]
                try:
                    results = await asyncio.to_thread(self._work, [item for item, _ in batch])
                except Error as exc:
                    results = [exc] * len(batch)
                except Exception as exc:  # never leave a caller waiting forever
                    failure = StorageError("storing the answer failed", reason=repr(exc)[:200])
                    results = [failure] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Error):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._flusher = None


def _storage_error(exc: SQLAlchemyError, what: str) -> StorageError:
    return StorageError(f"coordinator database failed ({what})", reason=type(exc).__name__)


_COMPLETE = (
    sa.update(db.inferences)
    .where((db.inferences.c.id == sa.bindparam("b_id")) & db.inferences.c.log_index.is_(None))
    .values(
        log_index=sa.bindparam("b_index"),
        response=sa.bindparam("b_response", type_=sa.JSON),
        entry=None,
        claimed_at=None,
    )
)


class InferenceStore:
    """Reserves, completes and recovers ``inferences`` rows (see the module docstring)."""

    def __init__(self, engine: Engine, log: Log, *, publish_timeout: float = 30.0) -> None:
        self._engine = engine
        self._log = log
        self._publish_timeout = publish_timeout
        self._reserving: _Group[PendingInference, PendingInference] = _Group(self._reserve)
        self._committing: _Group[tuple[int, PendingInference], StoredInference] = _Group(
            self._commit
        )
        self._entries: dict[int, bytes] = {}

    # -- reading and recovering -----------------------------------------------------------

    def get(self, inference_id: str) -> tuple[Digest, dict[str, Any]] | None:
        """The request digest and answer of a completed ``inference_id``, or None (no row,
        or a pending one)."""
        row = self._row(inference_id)
        if row is None or row.log_index is None:
            return None
        return Digest.from_text(row.request_digest), dict(row.response)

    def _row(self, inference_id: str) -> Any:
        query = sa.select(db.inferences).where(db.inferences.c.id == inference_id)
        try:
            with self._engine.connect() as conn:
                return conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise _storage_error(exc, "read inference") from exc

    def recover(
        self, inference_id: str, *, now: float | None = None
    ) -> tuple[Digest, dict[str, Any]] | None:
        """As :meth:`get`, but a pending row is completed first when its entry is in the log
        (or appended from the row, if its claim has expired). None if there is no row;
        ``NotFoundError`` if the row is pending and its owner may still be appending its entry."""
        row = self._row(inference_id)
        if row is None:
            return None
        if row.log_index is None:
            row = self._finish(row, now=now or time.time())
        return Digest.from_text(row.request_digest), dict(row.response)

    def recover_all(self, *, now: float | None = None) -> int:
        """Complete every pending row that can be (start-up); the number completed."""
        query = sa.select(db.inferences.c.id).where(db.inferences.c.log_index.is_(None))
        try:
            with self._engine.connect() as conn:
                ids = list(conn.execute(query).scalars())
        except SQLAlchemyError as exc:
            raise _storage_error(exc, "list pending inferences") from exc
        done = 0
        for inference_id in ids:
            try:
                self.recover(inference_id, now=now)
                done += 1
            except NotFoundError:
                pass  # not in the log and still claimed: its owner may be alive
        return done

    def _finish(self, row: Any, *, now: float) -> Any:
        entry = str(row.entry).encode()
        index = self._log.storage.find_leaf(bytes.fromhex(row.leaf_hash), self._log.size)
        if index is None:
            if not self._claim(row.id, now):
                current = self._row(row.id)
                if current is not None and current.log_index is not None:
                    return current  # completed meanwhile
                raise NotFoundError(
                    "this inference is being answered and is not logged yet", id=row.id[:200]
                )
            # Its owner died before the append: log it now, from the very bytes it reserved.
            index = self._log.add(entry)
        answer = dict(row.response)
        cites = answer.pop(_CITES, [])
        pending = PendingInference(
            inference_id=row.id,
            model=Digest.from_text(row.model),
            policy=row.policy,
            request_digest=Digest.from_text(row.request_digest),
            entry=entry,
            answer=answer,
            cites=tuple(int(i) for i in cites if isinstance(i, int)),
        )
        result = self._commit([(index, pending)])[0]
        if isinstance(result, Error):
            raise result
        _log.info("completed pending inference %s (log index %d)", row.id, index)
        return self._row(row.id)

    def _claim(self, inference_id: str, now: float) -> bool:
        query = (
            sa.update(db.inferences)
            .where(
                (db.inferences.c.id == inference_id)
                & db.inferences.c.log_index.is_(None)
                & (db.inferences.c.claimed_at < now - CLAIM_TIMEOUT)
            )
            .values(claimed_at=now)
        )
        try:
            with self._engine.begin() as conn:
                return bool(conn.execute(query).rowcount == 1)
        except SQLAlchemyError as exc:
            raise _storage_error(exc, "claim inference") from exc

    # -- writing --------------------------------------------------------------------------

    async def reserve(self, pending: PendingInference) -> PendingInference:
        """Write ``pending`` as a pending row (``ConflictError`` if its id is taken)."""
        return await self._reserving.submit(pending)

    async def commit(self, index: int, pending: PendingInference) -> StoredInference:
        """Prove log entry ``index`` (``pending``'s entry) and complete its row."""
        return await self._committing.submit((index, pending))

    def _reserve(self, batch: list[PendingInference]) -> list[PendingInference | Error]:
        now = time.time()
        try:
            self._insert([p.to_row(now) for p in batch])
        except IntegrityError:
            # An id is taken (by another replica): insert one by one to find out which.
            return [self._insert_one(p, now) for p in batch]
        return list(batch)

    def _insert(self, rows: Sequence[dict[str, Any]]) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(db.inferences), list(rows))
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise _storage_error(exc, "reserve inference") from exc

    def _insert_one(self, pending: PendingInference, now: float) -> PendingInference | Error:
        try:
            self._insert([pending.to_row(now)])
        except IntegrityError:
            return ConflictError(
                "an inference with this id is already stored", id=pending.inference_id
            )
        except Error as exc:
            return exc
        return pending

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

    def _cited(self, index: int, size: int, proofs: dict[int, list[bytes]]) -> dict[str, Any]:
        """One cited entry with its inclusion proof at ``size`` (entries never change, so
        their bytes are cached across answers; proofs are shared within a batch)."""
        entry = self._entries.get(index)
        if entry is None:
            entry = self._log.entries(index, index + 1)[0]
            if len(self._entries) >= _ENTRY_CACHE:
                self._entries.pop(next(iter(self._entries)))
            self._entries[index] = entry
        if index not in proofs:
            proofs[index] = self._log.inclusion_proof(index, size)
        return {
            "index": index,
            "entry": base64.b64encode(entry).decode(),
            "inclusion_proof": _b64(proofs[index]),
        }

    def _commit(self, batch: list[tuple[int, PendingInference]]) -> list[StoredInference | Error]:
        note, size = self._published(max(index for index, _ in batch))
        results: list[StoredInference | Error] = []
        proofs: dict[int, list[bytes]] = {}
        for index, pending in batch:
            try:
                proof = self._log.inclusion_proof(index, size)
                evidence = [
                    self._cited(i, size, proofs)
                    for i in sorted(set(pending.cites))
                    if 0 <= i < index
                ]
                known = pending.known_size
                consistency = None
                if known is not None and 0 < known < size:
                    consistency = (known, self._log.consistency_proof(known, size))
            except Error as exc:
                results.append(exc)
                continue
            answer = {k: v for k, v in pending.answer.items() if k != _CITES}
            results.append(
                StoredInference(
                    inference_id=pending.inference_id,
                    request_digest=pending.request_digest,
                    log_index=index,
                    response=with_log(
                        answer,
                        index,
                        proof,
                        note,
                        evidence=evidence,
                        consistency=consistency,
                    ),
                )
            )
        params = [
            {"b_id": r.inference_id, "b_index": r.log_index, "b_response": dict(r.response)}
            for r in results
            if isinstance(r, StoredInference)
        ]
        if params:
            try:
                with self._engine.begin() as conn:
                    conn.execute(_COMPLETE, params)
            except SQLAlchemyError as exc:
                failure = _storage_error(exc, "complete inference")
                return [failure] * len(batch)
        return results
