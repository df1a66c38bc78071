"""Log storage: entries, tiles, checkpoints and the tree state, on SQLite or PostgreSQL.

One schema, written with SQLAlchemy Core, serves both back ends:

``tlog_state``        one row (``id = 1``): origin, verifier key, integrated size, the compact
                      range (hashes of :func:`~veriml.tlog.merkle.range_nodes` of the size,
                      concatenated) and the published size. A restart reads this row and needs
                      no rescan of the entries.
``tlog_entries``      ``idx`` → entry bytes and leaf hash (indexed, for dedup and proof by hash).
``tlog_tiles``        (``level``, ``idx``) → concatenated hashes of a C2SP tlog-tiles tile
                      (https://c2sp.org/tlog-tiles#merkle-tree): only the level-8L hashes are
                      stored; partial tiles are rewritten as the tree grows, so the row always
                      holds the widest version and narrower partial tiles are its prefixes.
``tlog_checkpoints``  every checkpoint ever signed: size → signed note bytes.

The schema is Alembic's (:mod:`veriml.tlog.migrations`, version table ``tlog_alembic_version``,
so the log shares a database with the coordinator and the witness): :meth:`LogStorage.create`
migrates it, and adopts a database whose tables an older version made with ``create_all``.
:data:`metadata` is what the migrations build; a test compares the two.

SQLite runs in WAL mode with ``synchronous=FULL``: an entry is acknowledged only after its
batch commits, and FULL makes that commit survive power loss, not only a process crash (NORMAL
in WAL mode may lose the last transactions on power failure). Writers serialise on a
database-level lock taken at the start of :meth:`LogStorage.write` — ``BEGIN IMMEDIATE`` on
SQLite, ``SELECT ... FOR UPDATE`` of the state row on PostgreSQL — and re-read the state inside
it, so several threads, processes or server replicas on one database build one log.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from veriml.core.errors import FormatError, StorageError
from veriml.tlog.merkle import HASH_SIZE
from veriml.tlog.migrations import LOG, upgrade
from veriml.tlog.tiles import MAX_ENTRY_SIZE

__all__ = [
    "MAX_ENTRY_SIZE",
    "LogStorage",
    "TreeState",
    "WriteTxn",
    "check_entry",
    "metadata",
]

"""Largest entry accepted, in bytes: 64 KiB less one, the most a uint16 length prefix in a
tlog-tiles entry bundle can describe (https://c2sp.org/tlog-tiles#log-entries)."""

TILE_BYTES = 256 * HASH_SIZE

metadata = sa.MetaData()
_state = sa.Table(
    "tlog_state",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("origin", sa.Text, nullable=False),
    sa.Column("vkey", sa.Text, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("compact_range", sa.LargeBinary, nullable=False),
    sa.Column("root_hash", sa.LargeBinary, nullable=False),
    sa.Column("published_size", sa.BigInteger, nullable=False),
)
_entries = sa.Table(
    "tlog_entries",
    metadata,
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("leaf_hash", sa.LargeBinary, nullable=False, index=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
)
_tiles = sa.Table(
    "tlog_tiles",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hashes", sa.LargeBinary, nullable=False),
)
_checkpoints = sa.Table(
    "tlog_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("note", sa.LargeBinary, nullable=False),
)


def check_entry(entry: bytes) -> None:
    """Raise :class:`FormatError` unless ``entry`` is bytes of at most 65,535 bytes."""
    if not isinstance(entry, bytes | bytearray | memoryview):
        raise FormatError("a log entry must be bytes", type=type(entry).__name__)
    if len(entry) > MAX_ENTRY_SIZE:
        raise FormatError("log entry is too large", size=len(entry), limit=MAX_ENTRY_SIZE)


@dataclass(frozen=True, slots=True)
class TreeState:
    """The log's state row: what a restart needs to carry on integrating."""

    origin: str
    vkey: str
    size: int
    range_hashes: tuple[bytes, ...]
    root_hash: bytes
    published_size: int


def _state_from_row(row: Any) -> TreeState:
    blob = bytes(row.compact_range)
    if len(blob) % HASH_SIZE:
        raise StorageError("stored compact range is corrupt", length=len(blob))
    hashes = tuple(blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE))
    return TreeState(
        origin=row.origin,
        vkey=row.vkey,
        size=int(row.size),
        range_hashes=hashes,
        root_hash=bytes(row.root_hash),
        published_size=int(row.published_size),
    )


class WriteTxn:
    """One integration transaction holding the log's write lock; see :meth:`LogStorage.write`."""

    def __init__(self, conn: Connection, state: TreeState) -> None:
        self._conn = conn
        self.state = state

    def tiles(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored hashes of the tiles ``(level, index)`` that exist, inside the lock."""
        return _select_tiles(self._conn, keys)

    def find_leaves(self, leaf_hashes: Sequence[bytes]) -> dict[bytes, int]:
        """For each of ``leaf_hashes`` already in the log, its lowest index."""
        found: dict[bytes, int] = {}
        unique = list(dict.fromkeys(leaf_hashes))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            rows = self._conn.execute(
                sa.select(_entries.c.leaf_hash, sa.func.min(_entries.c.idx))
                .where(_entries.c.leaf_hash.in_(chunk))
                .group_by(_entries.c.leaf_hash)
            )
            found.update({bytes(h): int(i) for h, i in rows})
        return found

    def append_entries(
        self, start: int, entries: Sequence[bytes], leaf_hashes: Sequence[bytes]
    ) -> None:
        if not entries:
            return
        rows = [
            (start + i, h, bytes(e))
            for i, (e, h) in enumerate(zip(entries, leaf_hashes, strict=True))
        ]
        # The hot path of integration: the driver's executemany on the transaction's own
        # connection skips SQLAlchemy's per-value bind processing (a third of the time).
        cursor: Any = self._conn.connection.cursor()
        if self._conn.dialect.name == "postgresql":
            # COPY is PostgreSQL's bulk path: several times faster than pipelined INSERTs.
            try:
                with cursor.copy(
                    "COPY tlog_entries (idx, leaf_hash, data) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["int8", "bytea", "bytea"])
                    for row in rows:
                        copy.write_row(row)
            finally:
                cursor.close()
            return
        try:  # SQLite (qmark parameters)
            cursor.executemany(
                "INSERT INTO tlog_entries (idx, leaf_hash, data) VALUES (?, ?, ?)", rows
            )
        finally:
            cursor.close()

    def put_tiles(self, tiles: Mapping[tuple[int, int], bytes]) -> None:
        """Insert or widen tiles. A tile only ever grows, so its old value is a prefix."""
        if not tiles:
            return
        rows = [{"level": lv, "idx": ix, "hashes": h} for (lv, ix), h in tiles.items()]
        stmt = _upsert(self._conn, _tiles)
        self._conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["level", "idx"], set_={"hashes": stmt.excluded.hashes}
            ),
            rows,
        )

    def checkpoint(self, size: int) -> bytes | None:
        """The signed note stored for ``size``, if one was signed."""
        note = self._conn.execute(
            sa.select(_checkpoints.c.note).where(_checkpoints.c.size == size)
        ).scalar_one_or_none()
        return None if note is None else bytes(note)

    def add_checkpoint(self, size: int, note: bytes) -> None:
        self._conn.execute(_checkpoints.insert().values(size=size, note=note))

    def set_state(
        self,
        *,
        size: int,
        range_hashes: Sequence[bytes],
        root_hash: bytes,
        published_size: int,
    ) -> None:
        self._conn.execute(
            _state.update()
            .where(_state.c.id == 1)
            .values(
                size=size,
                compact_range=b"".join(range_hashes),
                root_hash=root_hash,
                published_size=published_size,
            )
        )
        self.state = TreeState(
            origin=self.state.origin,
            vkey=self.state.vkey,
            size=size,
            range_hashes=tuple(range_hashes),
            root_hash=root_hash,
            published_size=published_size,
        )


def _upsert(conn: Connection, table: sa.Table) -> Any:
    """``INSERT`` with ``ON CONFLICT`` support, in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise StorageError("unsupported database (SQLite or PostgreSQL)", dialect=conn.dialect.name)


def _select_tiles(
    conn: Connection, keys: Sequence[tuple[int, int]]
) -> dict[tuple[int, int], bytes]:
    if not keys:
        return {}
    cond = sa.tuple_(_tiles.c.level, _tiles.c.idx).in_(sorted(set(keys)))
    rows = conn.execute(sa.select(_tiles.c.level, _tiles.c.idx, _tiles.c.hashes).where(cond))
    return {(int(lv), int(ix)): bytes(h) for lv, ix, h in rows}


class LogStorage:
    """The database behind one log. Thread-safe; share one instance per process.

    ``url`` is a SQLAlchemy URL: ``sqlite:///path/log.db`` (the default back end) or
    ``postgresql+psycopg://user@host/db``. Tiles only grow, so up to ``tile_cache`` of them
    are kept in memory (about 8 KiB each).
    """

    def __init__(self, url: str, *, tile_cache: int = 2048) -> None:
        self.url = url
        try:
            self.engine: Engine = _make_engine(url)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StorageError("unusable database URL", url=_redact(url), reason=str(exc)) from exc
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_limit = tile_cache
        self._cache_lock = threading.Lock()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # -- creation -------------------------------------------------------------------------

    def create(self, *, origin: str, vkey: str, empty_root: bytes, empty_note: bytes) -> TreeState:
        """Migrate the schema (:mod:`veriml.tlog.migrations`), create the empty log if absent
        and return the stored state.

        Refuses (``StorageError``) a database that already holds a log with another origin or
        key: two logs must never share tables.
        """
        upgrade(self.engine, LOG, metadata)
        with self._write_conn() as conn:
            row = self._lock_state(conn)
            if row is None:
                # Two replicas may create one log at once: the second insert does nothing
                # (the empty checkpoint is the same bytes: Ed25519 signatures are deterministic).
                state_row = _upsert(conn, _state).values(
                    id=1,
                    origin=origin,
                    vkey=vkey,
                    size=0,
                    compact_range=b"",
                    root_hash=empty_root,
                    published_size=0,
                )
                conn.execute(state_row.on_conflict_do_nothing(index_elements=["id"]))
                empty = _upsert(conn, _checkpoints).values(size=0, note=empty_note)
                conn.execute(empty.on_conflict_do_nothing(index_elements=["size"]))
                row = self._lock_state(conn)
            state = _state_from_row(row)
        if state.origin != origin:
            raise StorageError("database holds another log", stored=state.origin, wanted=origin)
        if state.vkey != vkey:
            raise StorageError("database log has another key", stored=state.vkey, wanted=vkey)
        return state

    # -- writing --------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[WriteTxn]:
        """A transaction holding the log's write lock, with the state re-read inside it."""
        with self._write_conn() as conn:
            row = self._lock_state(conn)
            if row is None:
                raise StorageError("no log in this database", url=_redact(self.url))
            yield WriteTxn(conn, _state_from_row(row))

    @contextmanager
    def _write_conn(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as raw:
                conn = raw.execution_options(veriml_write=True)
                with conn.begin():
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError("log database write failed", reason=_reason(exc)) from exc
        except self.engine.dialect.loaded_dbapi.Error as exc:  # from the raw executemany
            raise StorageError("log database write failed", reason=str(exc)) from exc

    def _lock_state(self, conn: Connection) -> Any:
        stmt = sa.select(_state).where(_state.c.id == 1)
        if conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        return conn.execute(stmt).first()

    def publish(self, size: int, note: bytes) -> None:
        """Record the (cosigned) note for ``size`` and make it the served checkpoint.

        The published size only moves forward, so a slow publisher cannot roll it back.
        """
        with self._write_conn() as conn:
            conn.execute(_checkpoints.update().where(_checkpoints.c.size == size).values(note=note))
            conn.execute(
                _state.update()
                .where(_state.c.id == 1, _state.c.published_size < size)
                .values(published_size=size)
            )

    # -- reading --------------------------------------------------------------------------

    @contextmanager
    def _read_conn(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise StorageError("log database read failed", reason=_reason(exc)) from exc

    def state(self) -> TreeState:
        with self._read_conn() as conn:
            row = conn.execute(sa.select(_state).where(_state.c.id == 1)).first()
        if row is None:
            raise StorageError("no log in this database", url=_redact(self.url))
        return _state_from_row(row)

    def checkpoint(self, size: int | None = None) -> tuple[int, bytes]:
        """The signed note for ``size``, or the published one: ``(size, note bytes)``."""
        with self._read_conn() as conn:
            if size is None:
                size = conn.execute(
                    sa.select(_state.c.published_size).where(_state.c.id == 1)
                ).scalar_one_or_none()
                if size is None:
                    raise StorageError("no log in this database", url=_redact(self.url))
            note = conn.execute(
                sa.select(_checkpoints.c.note).where(_checkpoints.c.size == size)
            ).scalar_one_or_none()
        if note is None:
            raise StorageError("no checkpoint of that size was signed", size=size)
        return int(size), bytes(note)

    def checkpoints(self) -> list[tuple[int, bytes]]:
        """Every checkpoint ever signed, by size."""
        with self._read_conn() as conn:
            rows = conn.execute(sa.select(_checkpoints).order_by(_checkpoints.c.size))
            return [(int(s), bytes(n)) for s, n in rows]

    def tiles(self, need: Mapping[tuple[int, int], int]) -> dict[tuple[int, int], bytes]:
        """Stored hashes of tiles: ``need`` maps ``(level, index)`` to the bytes wanted.

        A tile only ever grows and its old bytes never change, so any cached version that is
        long enough is as good as the database's; shorter ones are read again.
        """
        found: dict[tuple[int, int], bytes] = {}
        missing: list[tuple[int, int]] = []
        with self._cache_lock:
            for key, length in need.items():
                hit = self._cache.get(key)
                if hit is None or len(hit) < length:
                    missing.append(key)
                else:
                    self._cache.move_to_end(key)
                    found[key] = hit
        if missing:
            with self._read_conn() as conn:
                fetched = _select_tiles(conn, missing)
            found.update(fetched)
            with self._cache_lock:
                self._cache.update(fetched)
                while len(self._cache) > self._cache_limit:
                    self._cache.popitem(last=False)
        return found

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``start`` (inclusive) to ``end`` (exclusive), in order."""
        with self._read_conn() as conn:
            rows = conn.execute(
                sa.select(_entries.c.idx, _entries.c.data)
                .where(_entries.c.idx >= start, _entries.c.idx < end)
                .order_by(_entries.c.idx)
            ).all()
        if len(rows) != end - start or (rows and int(rows[0][0]) != start):
            raise StorageError("log entries are missing", start=start, end=end, found=len(rows))
        return [bytes(d) for _, d in rows]

    def find_leaf(self, leaf_hash: bytes, below: int) -> int | None:
        """The lowest index below ``below`` whose leaf hash is ``leaf_hash``, if any."""
        with self._read_conn() as conn:
            idx = conn.execute(
                sa.select(sa.func.min(_entries.c.idx)).where(
                    _entries.c.leaf_hash == leaf_hash, _entries.c.idx < below
                )
            ).scalar_one_or_none()
        return None if idx is None else int(idx)


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0]


def _redact(url: str) -> str:
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid URL>"


def _make_engine(url: str) -> Engine:
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    # The stdlib driver's own transaction handling is switched off (isolation_level=None) so
    # that we can choose BEGIN IMMEDIATE for writers: a deferred BEGIN would take the write
    # lock only at the first write and could fail with SQLITE_BUSY after reading stale state.
    engine = sa.create_engine(
        url, connect_args={"timeout": 60, "check_same_thread": False}, pool_pre_ping=False
    )

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=60000")
        # The leaf-hash index takes random inserts; a 32 MiB page cache (allocated as used,
        # default 2 MiB) keeps it in memory and makes integration ~1.5x faster.
        cur.execute("PRAGMA cache_size=-32768")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Readers run each statement in autocommit (a snapshot per statement, no extra round
        # trip); everything they read is append-only, so nothing can change under them.
        if conn.get_execution_options().get("veriml_write", False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
