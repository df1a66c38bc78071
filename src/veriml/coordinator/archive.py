"""Safe, bounded extraction of an uploaded model folder from a streamed tar archive.

The archive is read with :mod:`tarfile` in stream mode (``r|*``: plain, gzip, bzip2 or xz),
one member at a time, as the bytes arrive: nothing is seeked and nothing is held whole. Every
limit is enforced while reading, so a hostile upload costs at most the limit to refuse:

* the upload's bytes (counted by the caller as they arrive) and the *extracted* bytes (a
  compressed archive may expand), against ``max_bytes``;
* the number of members, against ``max_files``; the path depth, against ``max_depth``.

Members must be regular files or directories with safe relative paths: no absolute paths,
no ``..``, no backslashes or NUL, no links, devices, FIFOs or sparse files, no name twice.
Anything else is refused with :class:`FormatError` naming the member, and the caller removes
the half-written folder.
"""

from __future__ import annotations

import lzma
import queue
import tarfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from veriml.core.errors import FormatError, LimitExceeded, StorageError

__all__ = ["ArchiveLimits", "ChunkPipe", "extract_tar"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveLimits:
    max_bytes: int
    max_files: int
    max_depth: int


class ChunkPipe:
    """A bounded byte pipe from an async producer to a blocking ``read()`` consumer.

    ``put`` blocks while the pipe is full (back-pressure: the upload is read no faster than it
    is extracted) and returns False once the consumer has given up, so the producer stops.
    """

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._buffer = b""
        self._eof = False
        self._closed = threading.Event()
        self._aborted = threading.Event()

    def put(self, chunk: bytes | None) -> bool:
        """Queue ``chunk`` (``None`` = end of stream); False if the reader has stopped."""
        while not self._closed.is_set():
            try:
                self._queue.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def put_nowait(self, chunk: bytes) -> bool:
        """Queue ``chunk`` if there is room (the fast path that needs no thread hop)."""
        try:
            self._queue.put_nowait(chunk)
            return True
        except queue.Full:
            return False

    def close(self) -> None:
        """The reader is done (or failed): producers stop and blocked puts return."""
        self._closed.set()

    def abort(self) -> None:
        """The producer failed: the reader sees a truncated stream and stops."""
        self._aborted.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            try:
                chunk = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._aborted.is_set():
                    self._eof = True
                continue
            if chunk is None:
                self._eof = True
            else:
                self._buffer += chunk
        if size < 0:
            size = len(self._buffer)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


def _safe_path(member: tarfile.TarInfo, limits: ArchiveLimits) -> PurePosixPath | None:
    name = member.name
    if "\\" in name or "\x00" in name or name.startswith("/"):
        raise FormatError("archive member has an unsafe path", member=name[:200])
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    if any(p == ".." for p in parts):
        raise FormatError("archive member escapes the folder", member=name[:200])
    if len(parts) > limits.max_depth:
        raise LimitExceeded(
            "archive member is nested too deep", member=name[:200], limit=limits.max_depth
        )
    return PurePosixPath(*parts) if parts else None


def extract_tar(stream: ChunkPipe, dest: Path, limits: ArchiveLimits) -> int:
    """Extract the tar read from ``stream`` into the empty folder ``dest``; the file count.

    Raises :class:`FormatError` (malformed, truncated or unsafe archive) or
    :class:`LimitExceeded`. Always closes ``stream`` so the producer never blocks forever.
    """
    files = 0
    written = 0
    seen: set[PurePosixPath] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:  # type: ignore[call-overload]
            for member in archive:
                rel = _safe_path(member, limits)
                if rel is None:
                    continue  # the archive's root "." itself
                if not (member.isreg() or member.isdir()) or member.issparse():
                    raise FormatError(
                        "archive member is not a regular file or folder (links, devices "
                        "and FIFOs are refused)",
                        member=member.name[:200],
                    )
                if rel in seen:
                    raise FormatError("archive holds a member twice", member=member.name[:200])
                seen.add(rel)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                files += 1
                if files > limits.max_files:
                    raise LimitExceeded("archive has too many files", limit=limits.max_files)
                if written + member.size > limits.max_bytes:
                    raise LimitExceeded("model is too large", limit=limits.max_bytes)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                if source is None:  # pragma: no cover - isreg() members always have data
                    raise FormatError("archive member has no data", member=member.name[:200])
                with target.open("xb") as out:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise LimitExceeded("model is too large", limit=limits.max_bytes)
                        out.write(chunk)
    except FileExistsError as exc:
        raise FormatError("archive holds a member twice", member=str(exc.filename)) from exc
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise FormatError(
            "not a complete tar archive (truncated or malformed)",
            reason=f"{type(exc).__name__}: {exc}"[:200],
        ) from exc
    except OSError as exc:
        raise StorageError("cannot write the uploaded model", reason=exc.strerror) from exc
    finally:
        stream.close()
    if files == 0:
        raise FormatError("archive holds no files")
    return files
