"""The log's history as this client has seen it: every checkpoint an answer shows must extend
the largest one seen before, by this client or by any process of this user (docs/sdk.md,
"Checkpoints"), so a coordinator cannot show two forks of its log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veriml.client._checkpoints import CheckpointStore
from veriml.client._config import cache_dir
from veriml.core.errors import (
    Check,
    Error,
    FormatError,
    LogInconsistencyError,
    NotFoundError,
    VerificationError,
)
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.client import LogClient, SignedCheckpoint
from veriml.tlog.merkle import verify_consistency
from veriml.tlog.note import NoteVerifier

__all__ = ["CHECKPOINT_WRITE_INTERVAL", "LOG_SIZE_HEADER", "Checkpoints", "LogHistory"]

LOG_SIZE_HEADER = "X-Veriml-Log-Size"
CHECKPOINT_WRITE_INTERVAL = 1.0
"""Seconds between two writes of the checkpoint store by one client (it always writes on close)."""

Checkpoints = bool | str | os.PathLike[str]
_log = logging.getLogger(__name__)


def _checkpoint_store(checkpoints: Checkpoints) -> CheckpointStore | None:
    """``True``: the user's store (``cache_dir()/checkpoints``); ``False``: none; a path: that
    folder."""
    if checkpoints is True:
        try:
            return CheckpointStore(cache_dir() / "checkpoints")
        except RuntimeError as exc:  # no home directory to find a cache folder in
            _log.warning("no checkpoint store (set VERIML_CACHE_DIR): %s", exc)
            return None
    if checkpoints is False:
        return None
    if isinstance(checkpoints, str | os.PathLike):
        return CheckpointStore(Path(checkpoints))
    raise FormatError("checkpoints is True, False or a folder", got=repr(checkpoints)[:40])


class LogHistory(ABC):
    """The largest checkpoint a client has seen, kept in memory and in the user's checkpoint
    store; the clients inherit it (:class:`veriml.client.Client`). ``log_key`` and
    ``_log_client`` are the client's: the pinned log key and its tile reader."""

    log_key: NoteVerifier | None

    def __init__(self, checkpoints: Checkpoints) -> None:
        # The largest checkpoint this client has seen: every later one must extend it. It
        # starts from the one any process of this user stored for the log (read once, on first
        # use) and is written back when it grows (at most once a second, and on close).
        self._latest: SignedCheckpoint | None = None
        self._latest_lock = threading.Lock()
        self._store = _checkpoint_store(checkpoints)
        self._store_lock = threading.Lock()
        self._store_read = False
        self._stored: Checkpoint | None = None  # what this client last read or wrote there
        self._stored_at = -float("inf")
        self._forked = False  # a fork was found against the store: leave it as evidence

    @abstractmethod
    def _log_client(self) -> LogClient:
        """The reader of the log's tiles (the client's, under its pinned key)."""
        ...

    def _check_consistent(
        self, signed: SignedCheckpoint, proof: tuple[int, Sequence[bytes]] | None = None
    ) -> None:
        """Online only: the answer's tree and the largest one seen before, by this client or
        (through the checkpoint store) any process of this user, are one history (RFC 9162
        §2.1.4 consistency proof: the one the answer carries from the size this client told
        it, else one computed from tiles), so a coordinator cannot show two forks of its log."""
        self._read_store()
        self._advance(signed, proof)
        self._write_store()

    def _advance(
        self, shown: SignedCheckpoint, proof: tuple[int, Sequence[bytes]] | None = None
    ) -> None:
        """Prove ``shown`` and the largest checkpoint seen so far one history, and keep the
        larger. Another thread may have moved that one meanwhile: then ``shown`` is proven
        against the new one too, so two answers that fork from each other never both pass."""
        while True:
            with self._latest_lock:
                latest = self._latest
            newer = shown
            if latest is not None and latest.checkpoint != shown.checkpoint:
                newer = self._one_history(latest, shown, proof)
            with self._latest_lock:
                if self._latest is not latest:
                    continue
                if latest is None or latest.checkpoint.size < newer.checkpoint.size:
                    self._latest = newer
                return

    def _one_history(
        self,
        seen: SignedCheckpoint,
        shown: SignedCheckpoint,
        proof: tuple[int, Sequence[bytes]] | None = None,
    ) -> SignedCheckpoint:
        """The larger of two checkpoints once the smaller is proven a prefix of it (with
        ``proof``, from the smaller size to ``shown``'s, when it is one), else
        :class:`LogInconsistencyError` naming both sizes."""
        older, newer = (
            (seen, shown) if seen.checkpoint.size <= shown.checkpoint.size else (shown, seen)
        )
        old, new = older.checkpoint, newer.checkpoint
        try:
            if proof is not None and proof[0] == old.size and newer is shown:
                verify_consistency(old.size, new.size, proof[1], old.root_hash, new.root_hash)
            else:
                self._log_client().verify_consistent(old, newer)
        except (VerificationError, NotFoundError) as exc:
            # NotFoundError: the log serves no tiles at a size it signed before (a rollback).
            evidence: dict[str, Any] = {}
            if self._store is not None and self._stored in (old, new) and self.log_key:
                evidence["stored"] = str(self._store.path(self.log_key))
            raise LogInconsistencyError(
                "the log forked: a checkpoint it showed before and this one are not one history",
                check=Check.CONSISTENCY,
                old=old.size,
                new=new.size,
                reason=exc.message,
                **evidence,
            ) from exc
        return newer

    def _read_store(self) -> None:
        """Once per client: the checkpoint any process of this user stored for the log
        becomes the one every answer must extend."""
        if self._store is None or self._store_read or self.log_key is None:
            return
        with self._store_lock:
            if self._store_read:
                return
            stored = self._store.load(self.log_key)
            self._store_read = True
            if stored is None:
                return
            self._stored = stored.checkpoint
            with self._latest_lock:
                if self._latest is None:
                    self._latest = stored

    def _write_store(self, *, closing: bool = False) -> None:
        """Store the largest checkpoint this client has seen if it grew (at most once a
        second unless ``closing``). When another process stored another one meanwhile, the two
        must be one history (:class:`LogInconsistencyError` otherwise); the larger is kept."""
        store, key = self._store, self.log_key
        if store is None or key is None or not self._store_read or self._forked:
            return
        if not closing and time.monotonic() - self._stored_at < CHECKPOINT_WRITE_INTERVAL:
            return  # the common case, decided without waiting for a writing thread
        with self._store_lock:
            for _ in range(8):
                with self._latest_lock:
                    latest = self._latest
                if latest is None or latest.checkpoint == self._stored:
                    return
                if not closing and time.monotonic() - self._stored_at < CHECKPOINT_WRITE_INTERVAL:
                    return
                try:
                    other = store.swap(key, self._stored, latest)
                except Error as exc:  # the check in memory still holds; the next write retries
                    _log.warning("checkpoint not stored: %s", exc.diagnostics())
                    return
                self._stored_at = time.monotonic()
                if other is None:
                    self._stored = latest.checkpoint
                    return
                try:
                    self._advance(other)
                except LogInconsistencyError:
                    self._forked = True
                    raise
                self._stored = other.checkpoint

    def _close_store(self) -> None:
        """On close: store what this client saw last. A fork found now still raises; a store
        or log that cannot be reached only warns."""
        try:
            self._write_store(closing=True)
        except LogInconsistencyError:
            raise
        except Error as exc:
            _log.warning("checkpoint not stored on close: %s", exc.diagnostics())

    def _known_size(self) -> dict[str, str]:
        """``X-Veriml-Log-Size``: the size of the largest checkpoint this client verified (or
        found in the checkpoint store), so the answer proves its own checkpoint consistent
        with it."""
        self._read_store()
        with self._latest_lock:
            latest = self._latest
        return {} if latest is None else {LOG_SIZE_HEADER: str(latest.checkpoint.size)}
