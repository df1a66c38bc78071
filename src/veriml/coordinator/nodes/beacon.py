"""The randomness beacon: epoch keys the coordinator commits to before it uses them.

Every request's draw secret ``r`` (which nodes, whether a spot check runs, an LLM's sampling
seed) is ``HMAC(k_e, request id)`` under the key of the current **epoch**
(:mod:`veriml.protocol.draw`). :class:`Beacon` keeps those keys:

1. a new epoch's key is drawn from the CSPRNG and stored in ``beacon_keys`` (the coordinator's
   database, shared by replicas; :mod:`veriml.coordinator.db.beacon`) before anything is
   logged;
2. one ``beacon`` entry commits to it and reveals the key of the epoch before the previous one
   (``REVEAL_LAG``: requests draw from the current epoch and may be logged in the next, so a
   key is revealed only once every job drawn from it has long expired; the ledger's fold checks
   the reveal against the earlier commitment, and every draw of that epoch against the key);
3. every ``interval`` seconds the next epoch begins.

A key that was committed but lost (a database restored from an old backup) can never be
revealed: if requests drew from it, the ledger refuses to go on without the reveal (a
coordinator could otherwise hide secrets it picked), so the ``beacon_keys`` table belongs in
every backup of the database. The keys never leave the database and the process, and are
never logged until revealed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from veriml.coordinator.db.beacon import BeaconKeyRepository
from veriml.coordinator.ledger.service import LedgerBook
from veriml.core.errors import Error, StorageError
from veriml.core.timestamps import utc_now
from veriml.ledger.entries import BeaconEntry
from veriml.ledger.state import REVEAL_LAG
from veriml.protocol.draw import KEY_SIZE, Draw, beacon_commitment, draw_secret

__all__ = ["Beacon", "Epoch"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Epoch:
    """One epoch: its number, secret key and the log index of the ``beacon`` entry that began
    it (None for a key no log commits to)."""

    number: int
    key: bytes
    index: int | None = None

    def draw(self, request_id: str) -> Draw:
        """The draw of one request under this epoch's key."""
        return Draw(self.number, draw_secret(self.key, request_id))


class Beacon:
    """The coordinator's epochs (module docstring): :meth:`open` at start-up, :meth:`current`
    per request, :meth:`run` in the background."""

    def __init__(self, keys: BeaconKeyRepository, book: LedgerBook, *, interval: float) -> None:
        if not interval > 0:
            raise StorageError("the beacon interval must be positive", interval=interval)
        self._keys = keys
        self._book = book
        self.interval = interval
        self._current: Epoch | None = None
        self._previous: Epoch | None = None
        self._lock = asyncio.Lock()

    def current(self) -> Epoch:
        """The epoch requests draw from now."""
        if self._current is None:
            raise StorageError("the randomness beacon is not open yet")
        return self._current

    def epoch(self, number: int) -> Epoch | None:
        """Epoch ``number`` when requests may draw from it: the current epoch or the one
        before (a client that named it just before the rotation), else None."""
        for epoch in (self._current, self._previous):
            if epoch is not None and epoch.number == number:
                return epoch
        return None

    async def open(self) -> Epoch:
        """Continue the logged epoch when its key is stored here, else begin a new one."""
        async with self._lock:
            state = await asyncio.to_thread(self._book.refresh)
            number = state.epoch
            if number is not None:
                key = await asyncio.to_thread(self._keys.key, number)
                if key is not None:
                    before = (
                        None if number == 0 else await asyncio.to_thread(self._keys.key, number - 1)
                    )
                    self._previous = (
                        None
                        if before is None
                        else Epoch(number - 1, before, state.epoch_index(number - 1))
                    )
                    self._current = Epoch(number, key, state.epoch_index(number))
                    return self._current
            return await self._begin(number)

    async def rotate(self) -> Epoch:
        """Begin the next epoch now, revealing the key of the epoch before the current one."""
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
        revealed = number - REVEAL_LAG
        previous = None if revealed < 0 else await asyncio.to_thread(self._keys.key, revealed)
        key = secrets.token_bytes(KEY_SIZE)
        await asyncio.to_thread(self._keys.store, number, key)
        entry = BeaconEntry(number, beacon_commitment(key), utc_now(), previous)
        if revealed >= 0 and previous is None:
            _log.warning("epoch %d's key is lost: it is never revealed", revealed)
        indices = await self._book.append([entry])
        await asyncio.to_thread(self._keys.logged, number, indices[0])
        current = self._current
        self._previous = current if current is not None and current.number == number - 1 else None
        self._current = Epoch(number, key, indices[0])
        _log.info("beacon epoch %d begins (log index %d)", number, indices[0])
        return self._current
