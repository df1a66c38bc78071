"""The randomness beacon: epoch keys the coordinator commits to before it uses them.

Every request's draw secret ``r`` (which nodes, whether a spot check runs, an LLM's sampling
seed) is ``HMAC(k_e, request id)`` under the key of the current **epoch**
(:mod:`veriml.protocol.draw`). :class:`Beacon` keeps those keys:

1. a new epoch's key is drawn from the CSPRNG and stored in ``beacon_keys`` (the coordinator's
   database, shared by replicas) before anything is logged;
2. one ``beacon`` entry commits to it and reveals the previous epoch's key (the ledger's fold
   checks the reveal against the earlier commitment, and every draw of that epoch against the
   key);
3. every ``interval`` seconds the next epoch begins.

A key that was committed but lost (a database restored from an old backup) can never be
revealed: the next epoch starts without a reveal, and an auditor reports that epoch's draws as
unchecked. The keys never leave the database and the process, and are never logged until
revealed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator import db
from veriml.coordinator.ledger import LedgerBook
from veriml.core.errors import Error, StorageError
from veriml.core.timestamps import utc_now
from veriml.ledger.entries import BeaconEntry
from veriml.protocol.draw import KEY_SIZE, Draw, beacon_commitment, draw_secret

__all__ = ["Beacon", "Epoch"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Epoch:
    """One epoch: its number and secret key."""

    number: int
    key: bytes

    def draw(self, request_id: str) -> Draw:
        """The draw of one request under this epoch's key."""
        return Draw(self.number, draw_secret(self.key, request_id))


class Beacon:
    """The coordinator's epochs (module docstring): :meth:`open` at start-up, :meth:`current`
    per request, :meth:`run` in the background."""

    def __init__(self, engine: Engine, book: LedgerBook, *, interval: float) -> None:
        if not interval > 0:
            raise StorageError("the beacon interval must be positive", interval=interval)
        self._engine = engine
        self._book = book
        self.interval = interval
        self._current: Epoch | None = None
        self._lock = asyncio.Lock()

    def current(self) -> Epoch:
        """The epoch requests draw from now."""
        if self._current is None:
            raise StorageError("the randomness beacon is not open yet")
        return self._current

    async def open(self) -> Epoch:
        """Continue the logged epoch when its key is stored here, else begin a new one."""
        async with self._lock:
            state = await asyncio.to_thread(self._book.refresh)
            number = state.epoch
            if number is not None:
                key = await asyncio.to_thread(self._key, number)
                if key is not None:
                    self._current = Epoch(number, key)
                    return self._current
            return await self._begin(number)

    async def rotate(self) -> Epoch:
        """Begin the next epoch now, revealing the current one's key."""
        async with self._lock:
            state = await asyncio.to_thread(self._book.refresh)
            return await self._begin(state.epoch)

    async def run(self) -> None:
        """Rotate every ``interval`` seconds until cancelled (a failure is retried)."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.rotate()
            except Error as exc:
                _log.warning("beacon epoch not rotated: %s", exc.diagnostics())

    async def _begin(self, latest: int | None) -> Epoch:
        number = 0 if latest is None else latest + 1
        previous = None if latest is None else await asyncio.to_thread(self._key, latest)
        key = secrets.token_bytes(KEY_SIZE)
        await asyncio.to_thread(self._store, number, key)
        entry = BeaconEntry(number, beacon_commitment(key), utc_now(), previous)
        if latest is not None and previous is None:
            _log.warning("epoch %d's key is lost: it is never revealed", latest)
        indices = await self._book.append([entry])
        await asyncio.to_thread(self._logged, number, indices[0])
        self._current = Epoch(number, key)
        _log.info("beacon epoch %d begins (log index %d)", number, indices[0])
        return self._current

    def _key(self, number: int) -> bytes | None:
        query = sa.select(db.beacon_keys.c.key).where(db.beacon_keys.c.epoch == number)
        try:
            with self._engine.connect() as conn:
                found = conn.execute(query).scalar()
        except SQLAlchemyError as exc:
            raise StorageError("cannot read the beacon keys", reason=type(exc).__name__) from exc
        return None if found is None else bytes.fromhex(str(found))

    def _store(self, number: int, key: bytes) -> None:
        row = {"epoch": number, "key": key.hex(), "created_at": time.time(), "log_index": None}
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(db.beacon_keys).where(db.beacon_keys.c.epoch == number))
                conn.execute(sa.insert(db.beacon_keys), [row])
        except IntegrityError as exc:
            raise StorageError("another replica began this epoch", epoch=number) from exc
        except SQLAlchemyError as exc:
            raise StorageError("cannot store the beacon key", reason=type(exc).__name__) from exc

    def _logged(self, number: int, index: int) -> None:
        query = (
            sa.update(db.beacon_keys)
            .where(db.beacon_keys.c.epoch == number)
            .values(log_index=index)
        )
        try:
            with self._engine.begin() as conn:
                conn.execute(query)
        except SQLAlchemyError as exc:
            raise StorageError("cannot record the beacon entry", reason=type(exc).__name__) from exc
