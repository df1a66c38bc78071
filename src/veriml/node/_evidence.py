"""What a node keeps for disputes, on disk: traces of traced jobs, and which requests it
answered (docs/node.md, "Traces" and "The retrace lane").

A node whose answer is challenged must reveal its trace for as long as the answer can be
challenged, restarts included, or it loses the dispute. So traces live in files, not memory:

- :class:`TraceStore` keeps one file per request under ``HOME/traces/`` (the name is the
  SHA-256 of the request id, so no request text ever reaches a path), written to a temporary
  file, fsynced and renamed into place: a crash leaves the old file or the new one, never half
  of one. At start-up the temporary files a crash left are removed, and so is any trace file
  that does not parse or is shorter than its header says: nothing torn is ever served. A file
  holds a JSON header (the trace's digest list, the job, ``retain_until``) and the recorded
  tensors in their canonical encoding, read one at a time at the offsets the header names,
  every size checked before anything is allocated. A trace is kept until its job's
  ``retain_until`` (the answer's challenge window) or ``hold`` seconds after it was last written
  or read, whichever is later (a dispute that opens at the end of the window still finds it),
  and the store keeps at most ``max_bytes`` of files, the oldest going first.
- :class:`AnsweredRequests` remembers the request ids the node answered, in two small
  append-only journals that rotate by size: a traced job for a request in it is a *retrace*
  (the coordinator re-deriving an untraced answer for a dispute) and runs in its own lane
  (:mod:`veriml.node._jobs`). Only SHA-256 digests of the ids are written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import secrets
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from veriml.core.errors import Check, FormatError, NotFoundError, StorageError, VerificationError
from veriml.core.tensors import canonical_tensor_bytes, tensor_from_canonical, tensor_to_json
from veriml.protocol.messages import format_time, parse_time
from veriml.runtime import Trace

__all__ = ["AnsweredRequests", "KeptTrace", "TraceStore"]

log = logging.getLogger("veriml.node")

MAGIC = b"veriml-kept-trace/v1\n"
_LENGTH = struct.Struct(">Q")
_MAX_HEADER = 64 << 20
"""A header (the digest list of one trace) larger than this is not read: a trace of
``MAX_TRACE_ENTRIES`` entries needs far less."""
_SUFFIX = ".trace"
_PARSED = 16
"""Parsed headers kept in memory: a dispute reads one trace many times in a row."""


def _file_name(request_id: str) -> str:
    return hashlib.sha256(request_id.encode()).hexdigest() + _SUFFIX


def _epoch(text: str) -> float:
    return parse_time(text, what="retain_until").timestamp()


def _time_text(epoch: float) -> str:
    return format_time(dt.datetime.fromtimestamp(epoch, dt.UTC))


@dataclass(slots=True)
class _Indexed:
    """What the store knows of one file without reading it again."""

    request_id: str
    path: Path
    size: int
    written: float
    retain_until: float
    touched: float
    """Wall time of the last write or read: the hold counts from it."""

    def expires(self, hold: float) -> float:
        return max(self.retain_until, self.touched + hold)


@dataclass(frozen=True, slots=True)
class KeptTrace:
    """A kept trace: its digest list in memory, its tensors read from the file on demand."""

    request_id: str
    job_id: str
    model: str
    trace: Trace
    retain_until: str
    path: Path
    offsets: dict[str, tuple[int, int]] = field(repr=False)
    data_start: int = 0
    max_tensor_bytes: int = 1 << 30

    @property
    def expires_at(self) -> str:
        return self.retain_until

    def tensor_names(self) -> list[str]:
        return list(self.offsets)

    def read_tensor(self, name: str) -> Any:
        """The kept tensor ``name`` (a graph input or a node output); :class:`NotFoundError` when
        the trace keeps none of that name."""
        where = self.offsets.get(name)
        if where is None:
            raise NotFoundError(
                "the trace keeps no tensor of this name",
                request_id=self.request_id[:256],
                name=name[:256],
            )
        offset, length = where
        if length > self.max_tensor_bytes + 1024:
            raise StorageError("a kept tensor is larger than the limit", name=name[:256])
        try:
            with self.path.open("rb") as f:
                f.seek(self.data_start + offset)
                data = f.read(length)
        except OSError as exc:
            raise NotFoundError("the trace is no longer kept", request_id=self.request_id) from exc
        if len(data) != length:
            raise StorageError("a kept trace file is truncated", request_id=self.request_id)
        return tensor_from_canonical(data, max_bytes=self.max_tensor_bytes)

    def tensor(self, name: str) -> dict[str, Any]:
        """:meth:`read_tensor` as tensor JSON (base64)."""
        return tensor_to_json(self.read_tensor(name), force_b64=True)

    def reveal(self, index: int) -> dict[str, Any]:
        """Entry ``index`` with its RFC 9162 inclusion proof against the trace root
        (docs/verification.md, "Service"): ``{"root", "size", "index", "entry", "proof"}``,
        the proof as hex strings. :class:`FormatError` for an index out of range."""
        size = self.trace.size
        if not 0 <= index < size:
            raise FormatError("trace index is out of range", index=index, size=size)
        return {
            "root": self.trace.root.to_text(),
            "size": size,
            "index": index,
            "entry": self.trace.entries[index].to_json(),
            "proof": [node.hex() for node in self.trace.inclusion_proof(index)],
        }

    def to_json(self) -> dict[str, Any]:
        """The whole trace with every kept tensor (``GET /v1/traces/{request_id}``)."""
        return {
            "request_id": self.request_id,
            "job_id": self.job_id,
            "model": self.model,
            "expires_at": self.retain_until,
            "trace": self.trace.to_json(),
            "tensors": {name: self.tensor(name) for name in self.offsets},
        }


class TraceStore:
    """Traces by request id, in files under ``root`` (module docstring).

    ``retention`` seconds is how long a trace is kept when its job names no
    ``retain_until``; ``max_retention`` is the longest a job may ask for
    (:meth:`check_retention`); ``hold`` is how long a trace stays after its last write or
    read; ``max_bytes`` bounds the files' total size. A later trace of the same request id (a
    retrace for a dispute) replaces the earlier one. ``clock`` gives wall-clock seconds.
    """

    def __init__(
        self,
        root: Path,
        *,
        retention: float,
        max_bytes: int,
        max_retention: float = 7 * 86_400.0,
        hold: float = 3600.0,
        max_tensor_bytes: int = 1 << 30,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.retention = retention
        self.max_bytes = max_bytes
        self.max_retention = max_retention
        self.hold = hold
        self.max_tensor_bytes = max_tensor_bytes
        self._clock = clock
        self._index: OrderedDict[str, _Indexed] = OrderedDict()  # oldest write first
        self._parsed: OrderedDict[str, tuple[_Indexed, KeptTrace]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._load()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def total_bytes(self) -> int:
        """Bytes of trace files kept."""
        return self._bytes

    def has(self, request_id: str) -> bool:
        with self._lock:
            return request_id in self._index

    # -- writing ------------------------------------------------------------------------------

    def check_retention(self, retain_until: str | None, *, expires_at: str) -> None:
        """Refuse (``check="job-retention"``) a job that asks to keep its trace longer than
        ``max_retention`` past the job's own expiry (``expires_at``, when the answer arrives
        at the latest): the node could not promise it."""
        if retain_until is None:
            return
        if _epoch(retain_until) - _epoch(expires_at) > self.max_retention:
            raise VerificationError(
                "job asks to keep its trace longer than this node keeps traces",
                check=Check.JOB_RETENTION,
                retain_until=retain_until,
                max_retention_seconds=self.max_retention,
            )

    def put(
        self,
        *,
        request_id: str,
        job_id: str,
        model: str,
        trace: Trace,
        retain_until: str | None = None,
    ) -> KeptTrace | None:
        """Keep ``trace`` (its tensors included) until ``retain_until`` (default: now plus
        ``retention``); None when it alone is larger than ``max_bytes`` or nothing is kept
        (``retention`` and ``hold`` both 0 and no ``retain_until``)."""
        now = self._clock()
        until = now + self.retention if retain_until is None else _epoch(retain_until)
        if until <= now and self.hold <= 0:
            return None
        tensors = trace.tensors or {}
        encoded = {name: canonical_tensor_bytes(a) for name, a in tensors.items()}
        offsets: dict[str, tuple[int, int]] = {}
        position = 0
        for name, data in encoded.items():
            offsets[name] = (position, len(data))
            position += len(data)
        header = json.dumps(
            {
                "request_id": request_id,
                "job_id": job_id,
                "model": model,
                "retain_until": _time_text(until),
                "written": now,
                "trace": trace.to_json(),
                "tensors": {name: list(where) for name, where in offsets.items()},
            },
            separators=(",", ":"),
        ).encode()
        size = len(MAGIC) + _LENGTH.size + len(header) + position
        if size > self.max_bytes or len(header) > _MAX_HEADER:
            log.warning("trace of %s (%d bytes) exceeds the trace budget", request_id[:80], size)
            return None
        path = self.root / _file_name(request_id)
        self._write(path, [MAGIC, _LENGTH.pack(len(header)), header, *encoded.values()])
        indexed = _Indexed(request_id, path, size, now, until, now)
        with self._lock:
            self._forget(request_id, unlink=False)  # the rename replaced its file
            while self._index and self._bytes + size > self.max_bytes:
                self._forget(next(iter(self._index)))
            self._index[request_id] = indexed
            self._bytes += size
        return self._parse(indexed)

    def _write(self, path: Path, parts: list[bytes]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        temporary = self.root / f".tmp-{secrets.token_hex(8)}"
        try:
            with temporary.open("wb") as f:
                for part in parts:
                    f.write(part)
                f.flush()
                os.fsync(f.fileno())
            temporary.replace(path)
            _fsync_dir(self.root)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise StorageError("cannot write the trace file", reason=str(exc)[:200]) from exc

    # -- reading ------------------------------------------------------------------------------

    def get(self, request_id: str) -> KeptTrace:
        """The kept trace of ``request_id``; :class:`NotFoundError` if none or expired. A read
        keeps the trace at least ``hold`` seconds more (a dispute is reading it)."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            indexed = self._index.get(request_id)
            if indexed is None:
                raise NotFoundError(
                    "no trace is kept for this request", request_id=request_id[:256]
                )
            indexed.touched = now
            cached = self._parsed.get(request_id)
        with contextlib.suppress(OSError):
            os.utime(indexed.path, (now, now))  # the hold survives a restart
        if cached is not None and cached[0] is indexed:
            return cached[1]
        return self._parse(indexed)

    def _parse(self, indexed: _Indexed) -> KeptTrace:
        try:
            with indexed.path.open("rb") as f:
                header = _read_header(f, indexed.size)
        except OSError as exc:
            raise NotFoundError(
                "the trace is no longer kept", request_id=indexed.request_id
            ) from exc
        kept = _kept(header, indexed, self.max_tensor_bytes)
        with self._lock:
            self._parsed[indexed.request_id] = (indexed, kept)
            self._parsed.move_to_end(indexed.request_id)
            while len(self._parsed) > _PARSED:
                self._parsed.popitem(last=False)
        return kept

    # -- pruning ------------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete the traces whose time is up; how many."""
        with self._lock:
            return self._prune(self._clock())

    def _prune(self, now: float) -> int:
        due = [rid for rid, i in self._index.items() if i.expires(self.hold) <= now]
        for request_id in due:
            self._forget(request_id)
        return len(due)

    def _forget(self, request_id: str, *, unlink: bool = True) -> None:
        indexed = self._index.pop(request_id, None)
        self._parsed.pop(request_id, None)
        if indexed is None:
            return
        self._bytes -= indexed.size
        if unlink:
            with contextlib.suppress(OSError):
                indexed.path.unlink()

    def _load(self) -> None:
        """Index the files an earlier run left (headers only), drop temporary, unreadable and
        truncated ones, and prune what is due."""
        if not self.root.is_dir():
            return
        found: list[_Indexed] = []
        for path in self.root.iterdir():
            if path.name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not path.name.endswith(_SUFFIX):
                continue
            try:
                stat = path.stat()
                with path.open("rb") as f:
                    header = _read_header(f, stat.st_size)
                request_id = str(header["request_id"])
                if path.name != _file_name(request_id):
                    raise FormatError("trace file is under another request's name")
                until = _epoch(str(header["retain_until"]))
                written = float(header["written"])
                _check_extent(header, stat.st_size)
            except (OSError, KeyError, TypeError, ValueError, FormatError) as exc:
                log.warning("removing unreadable trace file %s: %s", path.name, exc)
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            found.append(_Indexed(request_id, path, stat.st_size, written, until, stat.st_mtime))
        for indexed in sorted(found, key=lambda i: i.written):
            self._index[indexed.request_id] = indexed
            self._bytes += indexed.size
        with self._lock:
            while self._index and self._bytes > self.max_bytes:
                self._forget(next(iter(self._index)))
            self._prune(self._clock())


def _read_header(f: BinaryIO, file_size: int) -> dict[str, Any]:
    prefix = f.read(len(MAGIC) + _LENGTH.size)
    if len(prefix) != len(MAGIC) + _LENGTH.size or not prefix.startswith(MAGIC):
        raise FormatError("not a kept trace file")
    (length,) = _LENGTH.unpack(prefix[len(MAGIC) :])
    if length > _MAX_HEADER or length > file_size - len(prefix):
        raise FormatError("kept trace header length is out of range", length=length)
    try:
        header = json.loads(f.read(length))
    except (ValueError, RecursionError) as exc:
        raise FormatError("kept trace header is not JSON") from exc
    if not isinstance(header, dict):
        raise FormatError("kept trace header is not an object")
    header["_data_start"] = len(prefix) + length
    return header


def _check_extent(header: dict[str, Any], file_size: int) -> None:
    """Every tensor the header names lies inside the file: a file cut short (a disk that lost
    its tail) is found at start-up and removed, never served half."""
    start = int(header["_data_start"])
    for where in dict(header.get("tensors") or {}).values():
        offset, length = int(where[0]), int(where[1])
        if offset < 0 or length < 0 or start + offset + length > file_size:
            raise FormatError("kept trace file is shorter than its header says")


def _kept(header: dict[str, Any], indexed: _Indexed, max_tensor_bytes: int) -> KeptTrace:
    data_start = int(header["_data_start"])
    offsets: dict[str, tuple[int, int]] = {}
    for name, where in dict(header.get("tensors") or {}).items():
        offset, length = int(where[0]), int(where[1])
        if offset < 0 or length < 0 or data_start + offset + length > indexed.size:
            raise StorageError("a kept trace file is truncated", request_id=indexed.request_id)
        offsets[str(name)] = (offset, length)
    return KeptTrace(
        request_id=indexed.request_id,
        job_id=str(header["job_id"]),
        model=str(header["model"]),
        trace=Trace.from_json(header["trace"]),
        retain_until=_time_text(indexed.retain_until),
        path=indexed.path,
        offsets=offsets,
        data_start=data_start,
        max_tensor_bytes=max_tensor_bytes,
    )


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AnsweredRequests:
    """The request ids this node answered (as SHA-256 digests), in two journals under
    ``root`` of at most ``max_bytes`` each: when the current one is full it becomes the
    previous one and the oldest is dropped, so the node remembers between ``max_bytes / 33``
    and twice that many recent answers, across restarts. Lines are appended without fsync:
    a crash of the process loses nothing, a crash of the machine at most the last few."""

    _LINE = 65  # 64 hex digits and a newline

    def __init__(self, root: Path, *, max_bytes: int = 4 << 20) -> None:
        self.root = root
        self.max_bytes = max(self._LINE, max_bytes)
        self._lock = threading.Lock()
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._file: BinaryIO | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._previous = set(self._read(self._path(1)))
        self._current = set(self._read(self._path(0)))

    def _path(self, generation: int) -> Path:
        return self.root / f"answered-{generation}.log"

    def _read(self, path: Path) -> Iterator[bytes]:
        try:
            with path.open("rb") as f:
                data = f.read(self.max_bytes + self._LINE)
        except OSError:
            return
        for line in data.split(b"\n"):
            if len(line) == 64:
                with contextlib.suppress(ValueError):
                    yield bytes.fromhex(line.decode("ascii"))

    def __contains__(self, request_id: object) -> bool:
        if not isinstance(request_id, str):
            return False
        digest = hashlib.sha256(request_id.encode()).digest()
        with self._lock:
            return digest in self._current or digest in self._previous

    def record(self, request_id: str) -> None:
        """Remember that this node answered ``request_id``."""
        digest = hashlib.sha256(request_id.encode()).digest()
        with self._lock:
            if digest in self._current:
                return
            try:
                if self._file is None:
                    self._file = self._path(0).open("ab")
                if self._file.tell() + self._LINE > self.max_bytes:
                    self._rotate()
                assert self._file is not None
                self._file.write(digest.hex().encode() + b"\n")
                self._file.flush()
            except OSError as exc:  # remembered in memory all the same
                log.warning("cannot journal an answered request: %s", exc)
            self._current.add(digest)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        self._path(0).replace(self._path(1))
        self._previous, self._current = self._current, set()
        self._file = self._path(0).open("ab")

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
