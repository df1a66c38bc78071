"""Safe, bounded extraction of an uploaded model folder from a spooled tar archive.

The upload is first spooled to disk whole, its digest computed as it arrives, so the
publisher's request signature over that digest is checked before a single header of the archive
is parsed (:mod:`veriml.coordinator.hub.service`, "authenticate before extracting"). The
spooled file is
then read with :mod:`tarfile` in stream mode (``r|*``: plain, gzip, bzip2 or xz), one member at
a time: nothing is seeked and nothing is held whole. Every limit is enforced while reading, so a
hostile archive costs at most the limit to refuse:

* the *extracted* bytes against ``max_bytes`` (the upload's own bytes are bounded by the caller
  as they arrive), and the compression ratio: once more than ``ratio_floor`` bytes are
  expanded, the archive may not have expanded more than ``max_ratio`` times the bytes read
  from the upload (a few KB of bzip2 or xz otherwise expand to gigabytes, all of which must be
  decompressed before the byte limit is reached);
* the number of members, against ``max_files``; the path depth, against ``max_depth``;
* every extended header (a GNU long name or link, a pax header) against ``max_header_bytes``,
  before it is read: :mod:`tarfile` reads such a header whole into memory, so a 100 KB gzip
  upload claiming a 200 MB long name would otherwise cost 200 MB to refuse. GNU sparse headers,
  whose extension blocks build unbounded lists, are refused before they are read too.

Members must be regular files or directories with safe relative paths: no absolute paths,
no ``..``, no backslashes or NUL, no links, devices, FIFOs or sparse files, no name twice.
Anything else is refused with :class:`FormatError` naming the member, and the caller removes
the half-written folder.
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, ClassVar

from veriml.core.errors import FormatError, LimitExceededError, StorageError

__all__ = ["MAX_HEADER_BYTES", "ArchiveLimits", "extract_tar"]

_CHUNK = 1 << 20
MAX_HEADER_BYTES = 64 << 10
"""The largest GNU long-name or pax extended header read (a path is at most a few KB)."""
_MAX_NAME = 255  # NAME_MAX of Linux and most file systems
_MAX_PATH = 4096  # PATH_MAX
_EXTENDED = frozenset(
    {tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE}
    | {tarfile.SOLARIS_XHDTYPE}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArchiveLimits:
    max_bytes: int
    max_files: int
    max_depth: int
    max_header_bytes: int = MAX_HEADER_BYTES
    max_ratio: int = 200
    """Expanded bytes per upload byte allowed beyond ``ratio_floor`` (gzip of real weights
    compresses about 1.1 times; of zeros, about 1,000 times)."""
    ratio_floor: int = 64 << 20


class _CountingReader:
    """A read-only file that counts the bytes read from it (the upload's compressed bytes)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.count += len(data)
        return data


class _BoundedTarInfo(tarfile.TarInfo):
    """A :class:`tarfile.TarInfo` that refuses an oversized extended header or a GNU sparse
    header before :mod:`tarfile` reads it (``_proc_member`` is where ``TarFile.next`` hands
    every header block on; stable since Python 3.0)."""

    max_header: ClassVar[int] = MAX_HEADER_BYTES

    def _proc_member(self, tarfile_: tarfile.TarFile) -> Any:
        if self.type in _EXTENDED and self.size > self.max_header:
            raise LimitExceededError(
                "archive has an extended header (long name or pax) that is too large",
                size=self.size,
                limit=self.max_header,
            )
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise FormatError(
                "archive member is not a regular file or folder (sparse files are refused)",
                member=self.name[:200],
            )
        try:
            return super()._proc_member(tarfile_)  # type: ignore[misc]
        except ValueError as exc:  # tarfile reads pax GNU.sparse.* values with a bare int()
            raise FormatError(
                "archive has a malformed extended header", reason=str(exc)[:200]
            ) from exc


def _safe_path(member: tarfile.TarInfo, limits: ArchiveLimits) -> PurePosixPath | None:
    name = member.name
    try:
        name.encode()
    except UnicodeEncodeError as exc:  # tarfile keeps bytes that are not UTF-8 as surrogates
        shown = name.encode(errors="backslashreplace").decode()
        raise FormatError("archive member's path is not UTF-8", member=shown[:200]) from exc
    if "\\" in name or "\x00" in name or name.startswith("/"):
        raise FormatError("archive member has an unsafe path", member=name[:200])
    parts = [p for p in PurePosixPath(name).parts if p not in (".", "")]
    if any(p == ".." for p in parts):
        raise FormatError("archive member escapes the folder", member=name[:200])
    if any(len(p.encode()) > _MAX_NAME for p in parts) or len(name.encode()) > _MAX_PATH:
        raise FormatError(
            f"archive member's path is too long (a name of at most {_MAX_NAME} bytes, a "
            f"path of at most {_MAX_PATH})",
            member=name[:200],
        )
    if len(parts) > limits.max_depth:
        raise LimitExceededError(
            "archive member is nested too deep", member=name[:200], limit=limits.max_depth
        )
    return PurePosixPath(*parts) if parts else None


def _open_stream(source: _CountingReader, tarinfo: type[tarfile.TarInfo]) -> tarfile.TarFile:
    try:
        return tarfile.open(  # type: ignore[call-overload,no-any-return]
            fileobj=source, mode="r|*", tarinfo=tarinfo
        )
    except TypeError as exc:  # tarfile reads a gzip header cut short as ord(b"")
        raise tarfile.ReadError(f"the gzip header is cut short ({exc})") from exc


def extract_tar(source: BinaryIO, dest: Path, limits: ArchiveLimits) -> int:
    """Extract the tar read from ``source`` into the empty folder ``dest``; the file count.

    Raises :class:`FormatError` (malformed, truncated or unsafe archive) or
    :class:`LimitExceededError`.
    """
    files = 0
    written = 0
    seen: set[PurePosixPath] = set()
    counted = _CountingReader(source)
    bounded = type("_Bounded", (_BoundedTarInfo,), {"max_header": limits.max_header_bytes})

    def check_ratio(expanded: int) -> None:
        if expanded > limits.ratio_floor and expanded > counted.count * limits.max_ratio:
            raise LimitExceededError(
                "archive expands too much (compression ratio)",
                read=counted.count,
                expanded=expanded,
                limit=limits.max_ratio,
            )

    try:
        with _open_stream(counted, bounded) as archive:
            stream = archive.fileobj
            for member in archive:
                check_ratio(stream.tell())
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
                    raise LimitExceededError("archive has too many files", limit=limits.max_files)
                if written + member.size > limits.max_bytes:
                    raise LimitExceededError("model is too large", limit=limits.max_bytes)
                target.parent.mkdir(parents=True, exist_ok=True)
                data = archive.extractfile(member)
                if data is None:  # pragma: no cover - isreg() members always have data
                    raise FormatError("archive member has no data", member=member.name[:200])
                with target.open("xb") as out:
                    while chunk := data.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_bytes:
                            raise LimitExceededError("model is too large", limit=limits.max_bytes)
                        check_ratio(stream.tell())
                        out.write(chunk)
    except FileExistsError as exc:
        raise FormatError("archive holds a member twice", member=str(exc.filename)) from exc
    except NotADirectoryError as exc:  # "a", then "a/b": a member inside a file
        raise FormatError(
            "archive puts a member inside one of its files", member=str(exc.filename)
        ) from exc
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise FormatError(
            "not a complete tar archive (truncated or malformed)",
            reason=f"{type(exc).__name__}: {exc}"[:200],
        ) from exc
    except OSError as exc:
        raise StorageError("cannot write the uploaded model", reason=exc.strerror) from exc
    if files == 0:
        raise FormatError("archive holds no files")
    return files
