"""What a node remembers of the jobs it admitted: replay protection (docs/node.md, "Replay
protection").

A job id is kept until its job expires, after which ``Job.open`` refuses the job as expired
anyway; the cap on a job's validity window bounds how many ids that is. The ids live in memory
and, with a journal (``HOME/replay/``), on disk too, so that a restart (a crash, a SIGKILL, a
deploy) neither reopens a replay nor refuses the jobs that were in flight:

- **Appends.** Each admitted id is appended before :meth:`ReplayCache.admit` returns: one
  ``write(2)`` of a 44-byte record (the job's expiry, SHA-256 of the id, a CRC-32), no fsync.
  A write is in the kernel's page cache when the call returns, so once the process dies,
  however it dies, the next process on this machine reads it back. Only a crash of the
  machine itself can lose the last records, which the next rule covers.
- **Trust.** Each journal file starts with a header naming the boot it was written in (Linux's
  boot id) and a *floor*: jobs issued before the floor are refused. A restart within the same
  boot trusts the journal and keeps its floor: a job issued before the restart that the
  journal does not name was never admitted, so it runs, and one it names is a replay. A
  journal written in another boot (the machine went down: unflushed records may be lost),
  damaged, missing or unreadable is not trusted: the floor becomes this process's start, so
  every job issued before it is refused (fail closed). Without a boot id (not Linux) the
  journal is never trusted. A torn last record is a write that never returned (the job was not
  admitted) and is dropped.
- **Size.** Two files take turns: appends go to the current one; once the other holds only
  expired ids and the current one has been current for a validity window, the other is
  replaced by an empty one and becomes current. So the files hold the ids admitted in about
  two validity windows, and the start-up rewrites only the unexpired ones.
- **One process.** A second process on the same home would miss the first one's ids, so the
  journal is locked (``flock``) while in use and a second process refuses to start. The
  kernel drops the lock when its process dies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import heapq
import logging
import math
import os
import secrets
import struct
import threading
import uuid
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path

from veriml.core.errors import Check, ConflictError, StorageError, VerificationError
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time, parse_time

__all__ = ["ReplayCache", "system_boot_id"]

log = logging.getLogger("veriml.node")

MAGIC = b"veriml-replay/1\n"
_HEADER = struct.Struct(">16s16sQ")  # magic, boot id, floor (ms since the epoch)
_RECORD = struct.Struct(">Q32s")  # expiry (ms since the epoch), SHA-256 of the job id
_CRC = struct.Struct(">I")
HEADER_SIZE = _HEADER.size + _CRC.size
RECORD_SIZE = _RECORD.size + _CRC.size
UNKNOWN_BOOT = bytes(16)
_FILES = ("admitted-0.log", "admitted-1.log")
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
_SKEW = dt.timedelta(seconds=5)
NO_JOURNAL = "no journal"


def system_boot_id() -> bytes:
    """This boot of the machine (Linux's ``boot_id``), or :data:`UNKNOWN_BOOT` where the
    system does not say (a journal written then is never trusted after a restart)."""
    try:
        return uuid.UUID(_BOOT_ID.read_text().strip()).bytes
    except (OSError, ValueError):
        return UNKNOWN_BOOT


def _ms(moment: dt.datetime) -> int:
    return math.ceil(moment.timestamp() * 1000)


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _sealed(body: bytes) -> bytes:
    return body + _CRC.pack(zlib.crc32(body))


def _unseal(chunk: bytes) -> bytes | None:
    body, crc = chunk[:-4], chunk[-4:]
    return body if _CRC.pack(zlib.crc32(body)) == crc else None


class _UntrustedError(Exception):
    """Why a journal on disk cannot say which jobs were admitted."""


@dataclass
class _Read:
    boot: bytes
    floor: int
    records: list[tuple[int, bytes]]


def _read_file(path: Path) -> _Read | None:
    """One journal file; None when absent. :class:`_UntrustedError` when damaged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _UntrustedError(f"{path.name} is unreadable: {exc}") from exc
    header = _unseal(data[:HEADER_SIZE]) if len(data) >= HEADER_SIZE else None
    if header is None:
        raise _UntrustedError(f"{path.name} has no valid header")
    magic, boot, floor = _HEADER.unpack(header)
    if magic != MAGIC:
        raise _UntrustedError(f"{path.name} is not a replay journal")
    body = memoryview(data)[HEADER_SIZE:]
    whole = len(body) - len(body) % RECORD_SIZE
    records = []
    # A partial record at the end is a write that never returned (its job was not admitted);
    # a whole record that fails its CRC is damage.
    for start in range(0, whole, RECORD_SIZE):
        record = _unseal(bytes(body[start : start + RECORD_SIZE]))
        if record is None:
            raise _UntrustedError(f"{path.name} is damaged at record {start // RECORD_SIZE}")
        expires, digest = _RECORD.unpack(record)
        records.append((int(expires), bytes(digest)))
    return _Read(bytes(boot), int(floor), records)


class _Journal:
    """The two files under ``root`` (module docstring), locked for this process."""

    def __init__(self, root: Path, *, boot: bytes, window_ms: int) -> None:
        self.root = root
        self.boot = boot
        self.window_ms = window_ms
        # [lock, appends]: closed by close(), or when the journal is collected (a node whose
        # start failed half-way must not keep its home locked).
        self._fds = [-1, -1]
        self._closer = weakref.finalize(self, _close_all, self._fds)
        self._current = 0
        self._size = 0
        self._since = 0
        self._current_max = 0
        self._other_max = 0
        self._damaged = False
        self.floor = 0

    def open(self, *, now: int) -> tuple[int | None, list[tuple[int, bytes]], str]:
        """Lock, read and rewrite the journal; return (its floor if trusted, else None; the
        unexpired records; why it is not trusted, or "")."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock()
        reads: list[_Read] = []
        why = ""
        for name in _FILES:
            try:
                read = _read_file(self.root / name)
            except _UntrustedError as exc:
                why = why or str(exc)
                continue
            if read is not None:
                reads.append(read)
        for stale in self.root.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                stale.unlink()
        if not reads and not why:
            why = f"{NO_JOURNAL} (first start, or it was removed)"
        elif not why and self.boot == UNKNOWN_BOOT:
            why = "this system has no boot id"
        elif not why and any(r.boot != self.boot for r in reads):
            why = "written before the machine restarted"
        floor = None if why else max(r.floor for r in reads)
        live: dict[bytes, int] = {}
        for read in reads:
            for expires, digest in read.records:
                if expires > now and live.get(digest, 0) < expires:
                    live[digest] = expires
        records = sorted((expires, digest) for digest, expires in live.items())
        self.floor = now if floor is None else floor
        self._start(0, records, now=now)
        with contextlib.suppress(OSError):
            (self.root / _FILES[1]).unlink()
        return floor, records, why

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: one process per home is the operator's to ensure
            return
        try:
            fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError("cannot open the replay journal's lock", reason=str(exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                "another node process uses this home (its replay journal is locked)",
                path=str(self.root),
            ) from exc
        self._fds[0] = fd

    def _start(self, index: int, records: list[tuple[int, bytes]], *, now: int) -> None:
        """Make file ``index`` hold a fresh header and ``records``, atomically, and append to
        it from now on."""
        parts = [_sealed(_HEADER.pack(MAGIC, self.boot, self.floor))]
        parts += [_sealed(_RECORD.pack(e, d)) for e, d in records]
        data = b"".join(parts)
        temporary = self.root / f".tmp-{secrets.token_hex(8)}"
        try:
            temporary.write_bytes(data)
            temporary.replace(self.root / _FILES[index])
            fd = os.open(self.root / _FILES[index], os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise StorageError("cannot write the replay journal", reason=str(exc)) from exc
        if self._fds[1] >= 0:
            os.close(self._fds[1])
        self._fds[1] = fd
        self._current = index
        self._size = len(data)
        self._since = now
        self._other_max, self._current_max = (
            self._current_max,
            max((e for e, _ in records), default=0),
        )

    def append(self, expires: int, digest: bytes, *, now: int) -> None:
        """Record one admitted id, or raise :class:`StorageError` (then it is not admitted)."""
        if self._damaged or self._fds[1] < 0:
            raise StorageError("the replay journal is closed or damaged; restart the node")
        if now >= self._other_max and now - self._since >= self.window_ms:
            self._start(1 - self._current, [], now=now)
        record = _sealed(_RECORD.pack(expires, digest))
        try:
            written = os.write(self._fds[1], record)
        except OSError as exc:
            raise StorageError("cannot journal the job id", reason=str(exc)) from exc
        if written != len(record):
            # A short write must not shift the records after it: cut it off again.
            try:
                os.ftruncate(self._fds[1], self._size)
            except OSError as exc:
                # Later records would not line up: refuse every job until a restart, which
                # finds the damage and falls back to its start time.
                self._damaged = True
                raise StorageError("the replay journal is damaged", reason=str(exc)) from exc
            raise StorageError("cannot journal the job id", reason="short write")
        self._size += len(record)
        self._current_max = max(self._current_max, expires)

    def close(self) -> None:
        self._closer()


def _close_all(fds: list[int]) -> None:
    for i, fd in enumerate(fds):
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        fds[i] = -1


class ReplayCache:
    """Job ids admitted and not yet expired (module docstring).

    ``journal`` is the folder of the on-disk journal (the node's ``HOME/replay``); without one
    the ids live in memory only and every job issued before ``started_at`` is refused. With
    one, that rule applies only when the journal cannot be trusted. ``boot`` is the machine's
    boot id (default: :func:`system_boot_id`; tests pass their own). ``admit`` is atomic (a
    lock), so two copies of one job arriving together admit one. :meth:`close` releases the
    journal.
    """

    def __init__(
        self,
        *,
        started_at: dt.datetime,
        max_validity: dt.timedelta,
        journal: Path | None = None,
        boot: bytes | None = None,
    ) -> None:
        self.started_at = started_at
        self.max_validity = max_validity
        self.floor = started_at
        """Jobs issued before this are refused (they may have run, unrecorded)."""
        self.restored = False
        """Whether a trusted journal carried the ids of an earlier process over."""
        self._seen: dict[bytes, int] = {}
        self._expiry: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._journal: _Journal | None = None
        if journal is None:
            return
        # A job admitted now expires within one window (its validity, plus the clock skew
        # ``Job.open`` allows its issue time): a file that stopped taking appends that long ago
        # holds only expired ids.
        window = math.ceil((max_validity + _SKEW).total_seconds() * 1000)
        self._journal = _Journal(journal, boot=boot or system_boot_id(), window_ms=window)
        try:
            floor, records, why = self._journal.open(now=_ms(started_at))
        except BaseException:
            self._journal.close()
            raise
        if floor is not None:
            self.floor = _time(floor)
            self.restored = True
            log.info("replay journal: %d admitted job ids restored", len(records))
        else:
            log.log(
                logging.INFO if why.startswith(NO_JOURNAL) else logging.WARNING,
                "replay journal not trusted (%s): jobs issued before %s are refused",
                why,
                format_time(started_at),
            )
        self._seen = {digest: expires for expires, digest in records}
        self._expiry = list(records)
        heapq.heapify(self._expiry)

    def __len__(self) -> int:
        return len(self._seen)

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.close()

    def admit(self, job: Job, *, now: dt.datetime | None = None) -> None:
        """Record ``job``'s id, or raise: :class:`ConflictError` for a replay (or a job that may
        have run unrecorded), :class:`VerificationError` for a validity window longer than the
        node accepts, :class:`StorageError` when the journal cannot record it."""
        current = now or dt.datetime.now(dt.UTC)
        issued = parse_time(job.issued_at, what="issued_at")
        expires = parse_time(job.expires_at, what="expires_at")
        if expires - issued > self.max_validity:
            raise VerificationError(
                "job validity window is longer than this node accepts",
                check=Check.JOB_VALIDITY,
                issued_at=job.issued_at,
                expires_at=job.expires_at,
                limit_seconds=self.max_validity.total_seconds(),
            )
        if issued < self.floor:
            raise ConflictError(
                "job was issued before this node started, so it may have run already",
                job_id=job.job_id,
                issued_at=job.issued_at,
                node_started=format_time(self.floor),
            )
        digest = hashlib.sha256(job.job_id.encode()).digest()
        until = _ms(expires)
        with self._lock:
            now_ms = _ms(current)
            self._prune(now_ms)
            if digest in self._seen:
                raise ConflictError("job was already received (replay)", job_id=job.job_id)
            if self._journal is not None:
                self._journal.append(until, digest, now=now_ms)
            self._seen[digest] = until
            heapq.heappush(self._expiry, (until, digest))

    def _prune(self, now: int) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            expires, digest = heapq.heappop(self._expiry)
            if self._seen.get(digest) == expires:
                del self._seen[digest]
