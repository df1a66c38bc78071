"""The checkpoints this user has seen, per log, across processes (docs/sdk.md, "Checkpoints").

A :class:`~veriml.client.Client` proves each answer's checkpoint consistent with the largest one
it saw before. Kept in memory only, that catches a log that forks within one client object; a
coordinator could still show the next process another history. So the largest verified
checkpoint of each log is also kept on disk, shared by every process of this user:
``FOLDER/<hex SHA-256 of the log's vkey>.json`` (``FOLDER`` is ``cache_dir()/checkpoints``)::

    {"version": 1, "log": "<the log's vkey>", "size": 42, "checkpoint": "<signed note>"}

The note is kept as the log signed it (with any cosignatures), so a fork found later is
answered with the log's own signature on the earlier view. A file is trusted only after its
note verifies again under the pinned log key; anything else (truncated, edited, another log's)
is ignored with a warning, never trusted and never a reason to fail.

Writers never lose each other's updates: :meth:`CheckpointStore.swap` is a compare-and-swap
under an exclusive lock on ``<name>.lock``. It replaces the file only if it still holds what
the caller last read; otherwise it returns what another process stored, and the caller proves
the two consistent before it tries again. The file is replaced atomically (a temporary file,
fsynced and renamed), mode 0600 in a 0700 folder.

    store = CheckpointStore(cache_dir() / "checkpoints")
    seen = store.load(log_key)               # SignedCheckpoint | None
    other = store.swap(log_key, seen, newer) # None once stored; else the one to reconcile
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from veriml.core.errors import Error, StorageError
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.client import SignedCheckpoint, verify_checkpoint_note
from veriml.tlog.note import NoteVerifier

__all__ = ["STORE_VERSION", "CheckpointStore"]

STORE_VERSION = 1
MAX_STORE_FILE = 1 << 20
"""A checkpoint note is a few hundred bytes, a few KiB with many cosignatures."""

_log = logging.getLogger(__name__)


def _file_name(log: NoteVerifier) -> str:
    return hashlib.sha256(log.vkey.encode()).hexdigest()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created 0600), held for the block; it is
    released when the file is closed, so a crashed holder never leaves it locked."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class CheckpointStore:
    """The largest verified checkpoint of each log, in ``folder`` (one JSON file per log)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def path(self, log: NoteVerifier) -> Path:
        """The file that holds ``log``'s checkpoint."""
        return self.folder / f"{_file_name(log)}.json"

    def load(self, log: NoteVerifier) -> SignedCheckpoint | None:
        """The stored checkpoint of ``log``, its signature checked again under ``log``;
        ``None`` when there is none, or when the file is not a valid one (with a warning)."""
        return self._read(log, warn=True)

    def swap(
        self, log: NoteVerifier, expected: Checkpoint | None, new: SignedCheckpoint
    ) -> SignedCheckpoint | None:
        """Store ``new`` if the file still holds ``expected`` (or nothing valid, or ``new``'s
        own checkpoint); return ``None`` then. Otherwise another process stored something
        since: return that, unchanged, for the caller to reconcile with ``new``. A smaller
        checkpoint never replaces a larger one. :class:`StorageError` if the folder cannot be
        written."""
        if new.checkpoint.origin != log.name:
            raise StorageError("a checkpoint of another log", origin=new.checkpoint.origin)
        try:
            self._make_folder()
            with _exclusive(self.folder / f"{_file_name(log)}.lock"):
                current = self._read(log, warn=False)
                if current is not None and current.checkpoint == new.checkpoint:
                    return None
                if current is not None and (
                    current.checkpoint != expected or current.checkpoint.size > new.checkpoint.size
                ):
                    return current
                self._write(log, new)
        except OSError as exc:
            raise StorageError(
                "cannot store the log's checkpoint",
                path=str(self.path(log)),
                reason=exc.strerror or repr(exc),
            ) from exc
        return None

    def _make_folder(self) -> None:
        if not self.folder.is_dir():
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _read(self, log: NoteVerifier, *, warn: bool) -> SignedCheckpoint | None:
        path = self.path(log)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_STORE_FILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if warn:
                _log.warning("ignoring the stored checkpoint %s: %s", path, exc.strerror)
            return None
        try:
            return _parse(data, log)
        except (Error, ValueError, TypeError, KeyError) as exc:
            if warn:
                reason = exc.diagnostics() if isinstance(exc, Error) else repr(exc)[:200]
                _log.warning("ignoring a corrupt stored checkpoint %s: %s", path, reason)
            return None

    def _write(self, log: NoteVerifier, signed: SignedCheckpoint) -> None:
        body = {
            "version": STORE_VERSION,
            "log": log.vkey,
            "size": signed.checkpoint.size,
            "checkpoint": signed.note.decode(),
        }
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", dir=self.folder)  # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(self.path(log))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _parse(data: bytes, log: NoteVerifier) -> SignedCheckpoint:
    """A store file's checkpoint, verified under ``log`` (raises on anything else)."""
    if len(data) > MAX_STORE_FILE:
        raise ValueError("the file is too large")
    obj: Any = json.loads(data)
    if not isinstance(obj, dict) or obj.get("version") != STORE_VERSION:
        raise ValueError("not a version 1 checkpoint file")
    if obj["log"] != log.vkey:
        raise ValueError("the file is for another log key")
    note = obj["checkpoint"]
    if not isinstance(note, str):
        raise TypeError("checkpoint is not a string")
    signed = verify_checkpoint_note(note.encode(), log)
    if obj["size"] != signed.checkpoint.size:
        raise ValueError("size does not match the checkpoint")
    return signed
