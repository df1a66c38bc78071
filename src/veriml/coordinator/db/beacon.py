"""The ``beacon_keys`` repository: the secret key of every randomness epoch the coordinator
committed to (docs/verification.md, "Randomness"), shared by the replicas on one database and
kept until the log reveals it (:mod:`veriml.coordinator.nodes.beacon`)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator.db import tables as db
from veriml.core.errors import StorageError

__all__ = ["BeaconKeyRepository"]


class BeaconKeyRepository:
    """Epoch keys by epoch number (blocking; run off the event loop)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def key(self, number: int) -> bytes | None:
        """Epoch ``number``'s key, None when it is not stored here."""
        query = sa.select(db.beacon_keys.c.key).where(db.beacon_keys.c.epoch == number)
        try:
            with self._engine.connect() as conn:
                found = conn.execute(query).scalar()
        except SQLAlchemyError as exc:
            raise StorageError("cannot read the beacon keys", reason=type(exc).__name__) from exc
        return None if found is None else bytes.fromhex(str(found))

    def store(self, number: int, key: bytes) -> None:
        """Store epoch ``number``'s new key, before anything commits to it; a
        :class:`StorageError` when another replica began this epoch."""
        row = {"epoch": number, "key": key.hex(), "created_at": time.time(), "log_index": None}
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(db.beacon_keys).where(db.beacon_keys.c.epoch == number))
                conn.execute(sa.insert(db.beacon_keys), [row])
        except IntegrityError as exc:
            raise StorageError("another replica began this epoch", epoch=number) from exc
        except SQLAlchemyError as exc:
            raise StorageError("cannot store the beacon key", reason=type(exc).__name__) from exc

    def logged(self, number: int, index: int) -> None:
        """Record the log index of the ``beacon`` entry that committed to epoch ``number``."""
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
