"""The witness's durable memory: the latest cosigned checkpoint of each log.

One row per origin. Updates are a compare-and-swap on the (size, root) the witness checked the
request against, so of two concurrent requests only one can win, and the view never rolls back
(https://c2sp.org/tlog-witness: "checking the old size ... and persisting the new checkpoint
must be performed atomically"). SQLite (WAL) by default, any SQLAlchemy URL otherwise.

The table is Alembic's (:mod:`veriml.tlog.migrations`, version table
``witness_alembic_version``, so the witness can share a database with a log or a coordinator);
opening the store migrates it, and adopts a table an older version made with ``create_all``.
A witness killed at any moment keeps what it cosigned: each update commits (``synchronous=FULL``
on SQLite) before the cosignature is returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.core.errors import StorageError
from veriml.tlog.migrations import WITNESS, upgrade

__all__ = ["StoredCheckpoint", "WitnessStore", "metadata"]

metadata = sa.MetaData()
_latest = sa.Table(
    "witness_latest_checkpoint",
    metadata,
    sa.Column("origin", sa.String(1024), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.LargeBinary, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """The latest checkpoint a witness cosigned for one log, with the cosigned note."""

    size: int
    root_hash: bytes
    note: bytes


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class WitnessStore:
    """Latest cosigned checkpoint per origin, behind a compare-and-swap."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        upgrade(engine, WITNESS, metadata)

    @classmethod
    def open(cls, where: str | Path) -> WitnessStore:
        """Open a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or a file."""
        url = str(where)
        if "://" not in url:
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{Path(url).resolve()}"
        try:
            engine = sa.create_engine(url)
        except (SQLAlchemyError, ValueError) as exc:
            raise StorageError("cannot open the witness state", url=url, reason=str(exc)) from exc
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_wal)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def latest(self, origin: str) -> StoredCheckpoint | None:
        try:
            with self.engine.connect() as conn:
                row = conn.execute(
                    sa.select(_latest.c.size, _latest.c.root_hash, _latest.c.note).where(
                        _latest.c.origin == origin
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise StorageError("cannot read the witness state", reason=str(exc)) from exc
        if row is None:
            return None
        return StoredCheckpoint(int(row.size), bytes(row.root_hash), bytes(row.note))

    def compare_and_swap(
        self, origin: str, *, expected: StoredCheckpoint | None, new: StoredCheckpoint
    ) -> bool:
        """Record ``new`` if the stored checkpoint is still ``expected``; ``False`` if not."""
        values = {"size": new.size, "root_hash": new.root_hash, "note": new.note}
        try:
            with self.engine.begin() as conn:
                if expected is None:
                    conn.execute(sa.insert(_latest).values(origin=origin, **values))
                    return True
                result = conn.execute(
                    sa.update(_latest)
                    .where(
                        _latest.c.origin == origin,
                        _latest.c.size == expected.size,
                        _latest.c.root_hash == expected.root_hash,
                    )
                    .values(**values)
                )
                return result.rowcount == 1
        except IntegrityError:
            return False
        except SQLAlchemyError as exc:
            raise StorageError("cannot update the witness state", reason=str(exc)) from exc
