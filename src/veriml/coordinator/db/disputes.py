"""Open disputes in the database, so a coordinator restart resumes them (docs/verification.md,
"Persistence").

The ``disputes`` table (:mod:`veriml.coordinator.db.tables`) holds one row per open dispute, written
just before its ``challenge`` entry is appended and deleted once its verdict is: everything
needed to bring the dispute back in another process. The engine
(:mod:`veriml.coordinator.disputes.service`) writes a row at each move (the reveals
recorded so far and the move it asks now); on start-up it claims the rows no live replica
holds and replays them.

A row belongs to one replica at a time: ``owner`` (a random id per process) and
``lease_until`` (Unix seconds). The owner renews its leases while it drives the disputes and
gives them up when it shuts down; any replica claims a row whose lease has run out, with one
``UPDATE ... WHERE lease_until < now`` so two replicas never claim the same row. The unique
``claim`` column refuses a second dispute of one claim even across replicas.

A process that is killed (SIGKILL, a crash, the machine) gives nothing up, and waiting out its
leases (three sweeps, three minutes by default) would stall its disputes after every restart.
So each owner also holds a *liveness lock* for as long as it runs, one that the operating
system or the database server drops when the process dies: an exclusive ``flock`` on a file
beside a SQLite database (``<database>.dispute-owners/``), a session-level advisory lock on
PostgreSQL (its session ends with the process's connection). An owner that holds its lock
writes its rows as ``<owner>@live``. A row so marked whose owner's lock can be taken belongs
to a dead process and is claimed at once (``UPDATE ... WHERE owner = <dead owner>``, so two
replicas that both find it dead claim it once); a row whose owner's lock is held, or whose
owner held none (a failure to take it, an in-memory database, an older version), waits for
its lease as before. The lock proves death, never life: a lock lost while its process lives
(a PostgreSQL session the network cut) lets another replica take that process's disputes
early, as an expired lease would; the owner takes the lock again at its next sweep.

All methods block (SQL); the engine calls them in worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from veriml.coordinator.db import tables as db
from veriml.coordinator.disputes.parties import Claim
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import ConflictError, StorageError
from veriml.core.receipt import TraceCommitment

__all__ = ["DisputeRecord", "DisputeStore", "PartyRecord", "answered_at"]

Reveal = tuple[int, Digest, Digest]

LIVE = "@live"
"""Marks a row's owner as holding a liveness lock (module docstring)."""

_log = logging.getLogger("veriml.coordinator")

try:
    import fcntl
except ImportError:  # not POSIX: SQLite rows wait for their leases
    _FLOCK = False
else:
    _FLOCK = True


@dataclass(frozen=True, slots=True)
class PartyRecord:
    """One side as stored: its claim and, for a node, how to reach it."""

    claim: Claim
    node: Candidate | None = None
    """None for a remote challenger (it moves through HTTP)."""

    def to_json(self) -> dict[str, Any]:
        node = self.node
        return {
            "claim": self.claim.to_json(),
            "node": None
            if node is None
            else {
                "node_id": node.node_id,
                "operator": node.operator,
                "endpoint": node.endpoint,
                "public_key": node.public_key,
                "log_index": node.log_index,
            },
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PartyRecord:
        raw = obj["claim"]
        trace = raw.get("trace")
        claim = Claim(
            account=str(raw["account"]),
            outputs={str(k): Digest.from_text(str(v)) for k, v in raw["outputs"].items()},
            trace=None
            if trace is None
            else TraceCommitment(Digest.from_text(str(trace["root"])), int(trace["size"])),
            node=None if raw.get("node") is None else str(raw["node"]),
        )
        node = obj.get("node")
        return cls(
            claim,
            None
            if node is None
            else Candidate(
                node_id=str(node["node_id"]),
                operator=str(node["operator"]),
                endpoint=str(node["endpoint"]),
                public_key=str(node["public_key"]),
                log_index=int(node["log_index"]),
                last_seen=0.0,
            ),
        )


@dataclass(slots=True, kw_only=True)
class DisputeRecord:
    """A row of ``disputes``: one open dispute, enough to resume it."""

    id: str
    inference: str
    defendant: PartyRecord
    challenger: PartyRecord
    claim: Digest
    receipt: Envelope
    model: Digest
    mode: str
    policy: str
    inputs: Mapping[str, Digest]
    opened: int | None = None
    reveals: list[Reveal] = field(default_factory=list)
    move: dict[str, Any] | None = None
    rounds: int = 0
    messages: int = 0

    def to_row(self, *, owner: str, lease_until: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "inference": self.inference,
            "defendant": self.defendant.claim.account,
            "challenger": self.challenger.claim.account,
            "claim": self.claim.to_text(),
            "receipt": self.receipt.to_json(),
            "model": self.model.to_text(),
            "mode": self.mode,
            "policy": self.policy,
            "inputs": {name: d.to_text() for name, d in sorted(self.inputs.items())},
            "parties": {
                "defendant": self.defendant.to_json(),
                "challenger": self.challenger.to_json(),
            },
            "opened": self.opened,
            "reveals": _reveals_json(self.reveals),
            "move": self.move,
            "rounds": self.rounds,
            "messages": self.messages,
            "created_at": time.time(),
            "owner": owner,
            "lease_until": lease_until,
        }

    @classmethod
    def from_row(cls, row: Any) -> DisputeRecord:
        parties = row.parties
        return cls(
            id=row.id,
            inference=row.inference,
            defendant=PartyRecord.from_json(parties["defendant"]),
            challenger=PartyRecord.from_json(parties["challenger"]),
            claim=Digest.from_text(row.claim),
            receipt=Envelope.from_json(row.receipt),
            model=Digest.from_text(row.model),
            mode=row.mode,
            policy=row.policy,
            inputs={str(k): Digest.from_text(str(v)) for k, v in row.inputs.items()},
            opened=row.opened,
            reveals=[
                (int(i), Digest.from_text(str(d)), Digest.from_text(str(c)))
                for i, d, c in row.reveals
            ],
            move=row.move,
            rounds=row.rounds,
            messages=row.messages,
        )


def _reveals_json(reveals: Sequence[Reveal]) -> list[list[Any]]:
    return [[i, d.to_text(), c.to_text()] for i, d, c in reveals]


def _failed(exc: SQLAlchemyError, what: str) -> StorageError:
    return StorageError(f"cannot {what} (disputes table)", reason=str(exc)[:200])


class DisputeStore:
    """The ``disputes`` table for one coordinator process (``owner``), module docstring."""

    def __init__(self, engine: Engine, *, owner: str, lease: float) -> None:
        self._engine = engine
        self.owner = owner
        self.lease = lease
        self._table = db.disputes
        self._liveness = _Liveness(engine, owner)
        self._row_owner: str | None = None
        self._deciding = threading.Lock()

    @property
    def _me(self) -> str:
        """The owner this process's rows carry, decided once: ``owner`` marked
        :data:`LIVE` when it holds its liveness lock (then, and only then, another process
        can prove it dead), else ``owner`` alone."""
        with self._deciding:  # the engine's worker threads may ask at once
            if self._row_owner is None:
                marked = self.owner + LIVE
                fits = len(marked) <= self._table.c.owner.type.length  # type: ignore[attr-defined]
                self._row_owner = marked if fits and self._liveness.hold() else self.owner
            return self._row_owner

    def insert(self, record: DisputeRecord) -> None:
        """Write the row of a dispute about to be logged; :class:`ConflictError` when a dispute
        of the same claim is open (on this or another replica)."""
        row = record.to_row(owner=self._me, lease_until=time.time() + self.lease)
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(self._table).values(**row))
        except IntegrityError as exc:
            raise ConflictError(
                "a dispute of this receipt with this claim is already open",
                claim=record.claim,
            ) from exc
        except SQLAlchemyError as exc:
            raise _failed(exc, "record the dispute") from exc

    def update(self, dispute: str, **values: Any) -> None:
        """Set ``opened``, ``reveals`` (as :data:`Reveal` tuples), ``move``, ``rounds`` or
        ``messages`` of a row; the lease is renewed with it."""
        if "reveals" in values:
            values["reveals"] = _reveals_json(values["reveals"])
        values["lease_until"] = time.time() + self.lease
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(self._table)
                    .where(self._table.c.id == dispute, self._table.c.owner == self._me)
                    .values(**values)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "record the dispute's move") from exc

    def delete(self, dispute: str) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(self._table).where(self._table.c.id == dispute))
        except SQLAlchemyError as exc:
            raise _failed(exc, "remove a settled dispute") from exc

    def ids(self) -> set[str]:
        """Every stored dispute's id (whoever drives it)."""
        try:
            with self._engine.connect() as conn:
                return set(conn.execute(sa.select(self._table.c.id)).scalars())
        except SQLAlchemyError as exc:
            raise _failed(exc, "list disputes") from exc

    def claim_due(self, *, now: float | None = None) -> list[DisputeRecord]:
        """Take over every row whose lease has run out (a replica that stopped renewing) or
        whose owner is provably dead (its liveness lock is free: a killed process, module
        docstring), and return them, oldest first."""
        current = time.time() if now is None else now
        table = self._table
        claimed: list[DisputeRecord] = []
        me = self._me
        try:
            with self._engine.connect() as conn:
                rows = conn.execute(
                    sa.select(table.c.id, table.c.owner, table.c.lease_until).order_by(
                        table.c.created_at
                    )
                ).all()
            leased = {r.owner for r in rows if r.lease_until >= current} - {None, me}
            dead = {
                owner
                for owner in sorted(leased)
                if owner.endswith(LIVE) and self._liveness.dead(owner.removesuffix(LIVE))
            }
            self._liveness.sweep({r.owner.removesuffix(LIVE) for r in rows if r.owner})
            for row in rows:
                if row.lease_until < current:
                    due = table.c.lease_until < current
                elif row.owner in dead:
                    due = table.c.owner == row.owner
                else:
                    continue
                dispute = row.id
                with self._engine.begin() as conn:
                    taken = conn.execute(
                        sa.update(table)
                        .where(table.c.id == dispute, due)
                        .values(owner=me, lease_until=current + self.lease)
                    )
                    if taken.rowcount != 1:
                        continue  # another replica was first
                    row = conn.execute(sa.select(table).where(table.c.id == dispute)).one()
                claimed.append(DisputeRecord.from_row(row))
        except SQLAlchemyError as exc:
            raise _failed(exc, "resume disputes") from exc
        return claimed

    def renew(self, disputes: Sequence[str]) -> None:
        """Extend this process's leases on ``disputes`` (it still drives them), and take its
        liveness lock again if it was lost."""
        if not disputes:
            return
        if self._me.endswith(LIVE):
            self._liveness.hold()
        table = self._table
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(table)
                    .where(table.c.id.in_(list(disputes)), table.c.owner == self._me)
                    .values(lease_until=time.time() + self.lease)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "renew dispute leases") from exc

    def release(self) -> None:
        """Give up this process's leases (shutting down): the next start resumes at once."""
        table = self._table
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    sa.update(table).where(table.c.owner == self._me).values(lease_until=0.0)
                )
        except SQLAlchemyError as exc:
            raise _failed(exc, "release dispute leases") from exc
        self._liveness.drop()


class _Liveness:
    """The liveness lock of one owner (module docstring): held by :meth:`hold` until
    :meth:`drop` (or until the store is collected, or the process dies); :meth:`dead` tests
    another owner's. Failures to take or test a lock are logged and mean "unknown": rows
    then wait for their leases."""

    def __init__(self, engine: Engine, owner: str) -> None:
        self._engine = engine
        self.owner = owner
        self._folder: Path | None = None
        if engine.dialect.name == "sqlite" and _FLOCK:
            database = engine.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                self._folder = Path(database).with_name(Path(database).name + ".dispute-owners")
        # [the lock file's descriptor, the PostgreSQL session]; closed by drop() or when the
        # store is collected, never left to a garbage-collected connection.
        self._held: list[Any] = [-1, None]
        self._closer = weakref.finalize(self, _let_go, self._held)
        self._lock = threading.Lock()

    @property
    def _postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def _file(self, owner: str) -> Path:
        assert self._folder is not None
        return self._folder / (hashlib.sha256(owner.encode()).hexdigest()[:32] + ".lock")

    def hold(self) -> bool:
        """Take the lock (again, if it was lost); whether this process holds it."""
        with self._lock:
            try:
                if self._postgres:
                    self._hold_session()
                    return True
                if self._folder is not None:
                    if self._held[0] < 0:
                        self._hold_file()
                    return True
            except (OSError, SQLAlchemyError) as exc:
                _log.warning("dispute owner %s holds no liveness lock: %s", self.owner, exc)
            return False

    def _hold_file(self) -> None:
        assert self._folder is not None
        self._folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._file(self.owner), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise
        self._held[0] = fd

    def _hold_session(self) -> None:
        session = self._held[1]
        if session is not None:
            try:
                session.exec_driver_sql("SELECT 1")
                session.commit()
                return
            except SQLAlchemyError:
                _close_session(session)  # the session (and the lock with it) is gone
                self._held[1] = None
        session = self._engine.connect()
        try:
            got = session.execute(sa.select(sa.func.pg_try_advisory_lock(_key(self.owner))))
            taken = bool(got.scalar())
            session.commit()  # a session lock outlives the transaction; idle, not in one
        except BaseException:
            _close_session(session)
            raise
        if not taken:
            _close_session(session)
            raise OSError("the owner's advisory lock is held by another session")
        self._held[1] = session

    def dead(self, owner: str) -> bool:
        """Whether ``owner``'s process is provably gone (its lock is free)."""
        try:
            if self._postgres:
                return self._session_free(owner)
            if self._folder is None:
                return False
            with _free_file(self._file(owner)) as free:
                if free:
                    self._file(owner).unlink()
                return free
        except (OSError, SQLAlchemyError) as exc:
            _log.warning("cannot tell whether dispute owner %s is alive: %s", owner, exc)
            return False

    def _session_free(self, owner: str) -> bool:
        key = _key(owner)
        with self._engine.connect() as conn:
            try:
                free = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
                if free:
                    conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                conn.commit()
            except BaseException:
                # Never hand the pool a session that may hold the dead owner's lock.
                conn.invalidate()
                raise
        return free

    def sweep(self, owners: set[str]) -> None:
        """Remove the lock files of dead owners that own no row (any of ``owners``)."""
        if self._folder is None or not self._folder.is_dir():
            return
        kept = {self._file(owner) for owner in owners} | {self._file(self.owner)}
        for path in self._folder.glob("*.lock"):
            if path not in kept:
                with contextlib.suppress(OSError), _free_file(path) as free:
                    if free:
                        path.unlink()

    def drop(self) -> None:
        with self._lock:
            if self._folder is not None and self._held[0] >= 0:
                with contextlib.suppress(OSError):
                    self._file(self.owner).unlink()
            self._closer()


def _key(owner: str) -> int:
    """The PostgreSQL advisory lock key of ``owner`` (a signed 64-bit integer)."""
    digest = hashlib.sha256(b"veriml-dispute-owner\0" + owner.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _free_file(path: Path) -> Iterator[bool]:
    """Whether no process holds ``path``'s lock (False when there is no such file); while the
    block runs, this process holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _close_session(session: Any) -> None:
    # Invalidated, not returned to the pool: the DBAPI connection closes, and its session
    # locks go with it.
    with contextlib.suppress(Exception):
        session.invalidate()
        session.close()


def _let_go(held: list[Any]) -> None:
    if held[0] >= 0:
        with contextlib.suppress(OSError):
            os.close(held[0])
        held[0] = -1
    if held[1] is not None:
        _close_session(held[1])
        held[1] = None


def answered_at(engine: Engine, inference: str) -> str | None:
    """When the coordinator recorded the answer ``inference`` (the ``inferences`` row's
    ``created_at``, written just before its log entry): where a challenge window without a
    ``final_after`` starts. None when there is no such row."""
    table = db.inferences
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(table.c.created_at).where(table.c.id == inference)
            ).scalar_one_or_none()
    except SQLAlchemyError as exc:
        raise _failed(exc, "read the answer's time") from exc
    return None if found is None else str(found)
