"""A content-addressed blob store over any fsspec filesystem (local folder, ``memory://``, S3).

Layout under the store's root URL::

    sha256/<first 2 hex>/<64 hex>   one blob per digest, written once
    incoming/<random>               uploads in progress; renamed into place when hashed

A blob is streamed to a temporary name while it is hashed (never held whole in memory), then
moved to its digest name, so a crash leaves at most a stray file under ``incoming/`` and never a
partial blob under a digest. A blob already present is not written again. Reads are verified:
:meth:`BlobStore.open` raises :class:`DigestMismatchError` at end of stream if the bytes do not hash
to the name, and :meth:`BlobStore.cat` before returning them.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, BinaryIO

from fsspec.core import url_to_fs

from veriml.core.digest import CHUNK_SIZE, Digest
from veriml.core.errors import Check, DigestMismatchError, InvalidModelError, StorageError
from veriml.models.validate import Limits, scan_folder

__all__ = ["DEFAULT_MAX_BLOB", "BlobRef", "BlobStore", "VerifiedReader"]

DEFAULT_MAX_BLOB = 64 << 30


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob's digest and size, as a folder manifest records each file."""

    digest: Digest
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "size": self.size}


class VerifiedReader:
    """A read-only stream over a blob that checks the digest when the end is reached."""

    def __init__(self, raw: BinaryIO, digest: Digest) -> None:
        self._raw = raw
        self._digest = digest
        self._hash = hashlib.sha256()
        self._done = False

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._hash.update(data)
        if not data or size < 0:
            self._finish()
        return bytes(data)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        calculated = Digest(self._hash.digest())
        if calculated != self._digest:
            raise DigestMismatchError(
                "stored blob does not match its digest (corrupted or tampered store)",
                check=Check.BLOB_DIGEST,
                expected=self._digest,
                calculated=calculated,
            )

    def close(self) -> None:
        self._raw.close()

    def __enter__(self) -> VerifiedReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class BlobStore:
    """Content-addressed storage at ``url`` (a path, ``file://``, ``memory://``, ``s3://`` ...).

    >>> store = BlobStore("memory://doc-example")
    >>> d = store.put_bytes(b"hello")
    >>> store.cat(d)
    b'hello'
    """

    def __init__(self, url: str, *, max_size: int = DEFAULT_MAX_BLOB) -> None:
        self.url = url
        self.max_size = max_size
        self._fs, root = url_to_fs(url)
        self._root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    def path(self, digest: Digest) -> str:
        """The filesystem path (inside the store's filesystem) of the blob ``digest``."""
        return f"{self._root}/sha256/{digest.hex[:2]}/{digest.hex}"

    def has(self, digest: Digest) -> bool:
        return bool(self._fs.exists(self.path(digest)))

    def size(self, digest: Digest) -> int:
        self._require(digest)
        return int(self._fs.size(self.path(digest)))

    def _require(self, digest: Digest) -> None:
        if not self.has(digest):
            raise StorageError("no such blob", digest=str(digest), store=self.url)

    def put_stream(self, stream: BinaryIO, *, max_size: int | None = None) -> BlobRef:
        """Store everything ``stream`` yields; at most ``max_size`` bytes or StorageError."""
        limit = self.max_size if max_size is None else max_size
        tmp = f"{self._root}/incoming/{uuid.uuid4().hex}"
        h = hashlib.sha256()
        size = 0
        try:
            self._fs.makedirs(f"{self._root}/incoming", exist_ok=True)
            with self._fs.open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK_SIZE):
                    size += len(chunk)
                    if size > limit:
                        raise StorageError("blob is too large", limit=limit, store=self.url)
                    h.update(chunk)
                    out.write(chunk)
            digest = Digest(h.digest())
            final = self.path(digest)
            if self._fs.exists(final):
                self._fs.rm(tmp)
            else:
                self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
                self._fs.mv(tmp, final)
        except BaseException:
            if self._fs.exists(tmp):
                self._fs.rm(tmp)
            raise
        return BlobRef(digest, size)

    def put_bytes(self, data: bytes) -> Digest:
        return self.put_stream(io.BytesIO(data)).digest

    def put_file(self, path: Path) -> Digest:
        """Store the file at ``path``, checking its size from ``stat`` before reading it."""
        return self._put_file(path).digest

    def _put_file(self, path: Path) -> BlobRef:
        try:
            size = path.stat().st_size
            if size > self.max_size:
                raise StorageError(
                    "file is too large for the store",
                    path=str(path),
                    size=size,
                    limit=self.max_size,
                )
            with path.open("rb") as f:
                return self.put_stream(f)
        except OSError as exc:
            raise StorageError("cannot read file", path=str(path), reason=exc.strerror) from exc

    def open(self, digest: Digest) -> VerifiedReader:
        """A stream over the blob; the read that reaches the end raises if the digest differs."""
        self._require(digest)
        return VerifiedReader(self._fs.open(self.path(digest), "rb"), digest)

    def cat(self, digest: Digest, *, max_size: int | None = None) -> bytes:
        """The whole blob (at most ``max_size`` bytes), verified against its digest."""
        limit = self.max_size if max_size is None else max_size
        size = self.size(digest)
        if size > limit:
            raise StorageError("blob is too large to read whole", size=size, limit=limit)
        with self.open(digest) as reader:
            return reader.read()

    def put_folder(self, path: Path, *, limits: Limits | None = None) -> dict[str, BlobRef]:
        """Store every file of a folder; return ``relative POSIX path -> BlobRef``.

        The walk refuses symlinks and special files and honours ``limits``, so nothing
        outside the folder is ever read.
        """
        scan = scan_folder(path, limits if limits is not None else Limits())
        manifest: dict[str, BlobRef] = {}
        for file in scan.files:
            rel = PurePosixPath(*file.relative_to(path).parts)
            manifest[str(rel)] = self._put_file(file)
        return dict(sorted(manifest.items()))

    def get_folder(self, manifest: dict[str, BlobRef], dest: Path) -> None:
        """Write the blobs of ``manifest`` under ``dest``; refuse paths that would escape it."""
        for name, ref in manifest.items():
            rel = PurePosixPath(name)
            if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in name:
                raise InvalidModelError("manifest path escapes the folder", path=name)
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with self.open(ref.digest) as reader, target.open("xb") as out:
                    while chunk := reader.read(CHUNK_SIZE):
                        out.write(chunk)
            except DigestMismatchError:
                target.unlink()  # never leave bytes that failed verification behind
                raise
