"""Audit a tiled log: replay every entry, recompute the tree, check every tile and checkpoint.

:func:`audit` streams the log bundle by bundle and never holds more than a bounded window of it:

1. fetch the checkpoint and verify the log signature (and a witness quorum, if given);
2. compare it with the checkpoint seen last time (the state file): a smaller size is a
   rollback, the same size with another root is a split view;
3. for every entry bundle, hash the entries and check them against the level-0 tile; fold the
   leaf hashes upward (256 hashes at level ``8L`` make one hash at level ``8L+8``) and check each
   completed tile of every level, then the partial tiles the checkpoint's size requires;
4. compare the recomputed root with the checkpoint's, and the root recomputed at the previous
   size with the previous checkpoint's (a consistency proof from the entries themselves);
5. only then record the new checkpoint in the state file, atomically.

Tiles and bundles follow https://c2sp.org/tlog-tiles; the Merkle tree RFC 9162 §2.1.

    report = audit("file:///srv/log", verifier, state_path=Path("log.state"))
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from veriml.core.errors import (
    Check,
    FormatError,
    LogInconsistencyError,
    RootMismatchError,
    StorageError,
)
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.client import LogClient, SignedCheckpoint, TileSource
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.merkle import EMPTY_ROOT, HASH_SIZE, leaf_hash, root_from_leaf_hashes
from veriml.tlog.merkle import root_from_range as fold_range
from veriml.tlog.note import NoteVerifier
from veriml.tlog.tiles import TILE_HEIGHT, TILE_WIDTH, TilePath

__all__ = ["AuditReport", "AuditState", "EntryCallback", "ProgressCallback", "audit"]

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(entries_done, entries_total)`` after each bundle."""

EntryCallback = Callable[[int, bytes], None]
"""Called as ``on_entry(index, entry_bytes)`` for every entry, in log order, before the root is
compared. Whatever it raises fails the audit (and the state file is left as it was): this is how
an auditor folds the ledger over the same pass without the log knowing what a ledger is."""

_PREFETCH = 16
_STATE_VERSION = 1
_MAX_STATE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class AuditState:
    """What an auditor remembers between runs: the last checkpoint it fully verified.

    Stored as JSON: ``{"version": 1, "origin", "size", "root_hash" (base64), "checkpoint"}``
    where ``checkpoint`` is the signed note as served, kept as evidence.
    """

    origin: str
    size: int
    root_hash: bytes
    checkpoint: str

    def to_bytes(self) -> bytes:
        doc = {
            "version": _STATE_VERSION,
            "origin": self.origin,
            "size": self.size,
            "root_hash": base64.b64encode(self.root_hash).decode(),
            "checkpoint": self.checkpoint,
        }
        return json.dumps(doc, indent=2).encode() + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditState:
        try:
            doc = json.loads(data)
            if doc.get("version") != _STATE_VERSION:
                raise FormatError("unknown audit state version", version=doc.get("version"))
            root = base64.b64decode(doc["root_hash"], validate=True)
            state = cls(str(doc["origin"]), int(doc["size"]), root, str(doc["checkpoint"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FormatError("audit state file is malformed", reason=str(exc)) from exc
        if len(state.root_hash) != HASH_SIZE or state.size < 0:
            raise FormatError("audit state file has a bad size or root hash")
        return state

    @classmethod
    def load(cls, path: Path) -> AuditState | None:
        """The state in ``path``, or ``None`` when there is no file yet."""
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError("cannot read audit state", path=str(path)) from exc
        if len(data) > _MAX_STATE_BYTES:
            raise FormatError("audit state file is too large", path=str(path))
        return cls.from_bytes(data)

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves either the old file or the new one, never half."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            Path(tmp).replace(path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError("cannot write audit state", path=str(path)) from exc


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of a successful audit (a failed one raises)."""

    origin: str
    size: int
    root_hash: bytes
    previous_size: int | None
    entries: int
    tiles: int
    seconds: float
    witnesses: tuple[str, ...] = ()

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds if self.seconds > 0 else float("inf")


def _perfect_root(hashes: Sequence[bytes]) -> bytes:
    return root_from_leaf_hashes(hashes)


class _TreeReplay:
    """Folds leaf hashes into the tile hierarchy and checks every tile as it completes."""

    def __init__(self, read_tile: Callable[[TilePath], bytes]) -> None:
        self._read_tile = read_tile
        self.levels: list[list[bytes]] = [[]]
        self.full_tiles: list[int] = [0]
        self.size = 0
        self.tiles_checked = 0

    def add(self, hashes: list[bytes], tile0: bytes | None = None) -> None:
        """Append leaf hashes that never cross a 256-leaf boundary."""
        buf = self.levels[0]
        buf.extend(hashes)
        self.size += len(hashes)
        if len(buf) == TILE_WIDTH:
            self._complete(0, tile0)

    def _complete(self, level: int, tile: bytes | None) -> None:
        buf = self.levels[level]
        self._check(TilePath(level, self.full_tiles[level]), buf, tile)
        self.full_tiles[level] += 1
        self.levels[level] = []
        if level + 1 == len(self.levels):
            self.levels.append([])
            self.full_tiles.append(0)
        up = self.levels[level + 1]
        up.append(_perfect_root(buf))
        if len(up) == TILE_WIDTH:
            self._complete(level + 1, None)

    def _check(self, path: TilePath, hashes: list[bytes], tile: bytes | None) -> None:
        served = tile if tile is not None else self._read_tile(path)
        expected = b"".join(hashes)
        if served != expected:
            first = next(
                (
                    i
                    for i in range(len(hashes))
                    if served[i * HASH_SIZE : (i + 1) * HASH_SIZE] != hashes[i]
                ),
                len(hashes),
            )
            raise LogInconsistencyError(
                "a served tile differs from the tree recomputed from the entries",
                check=Check.TILE,
                tile=path.to_path(),
                hash_index=first,
                served=served[first * HASH_SIZE : (first + 1) * HASH_SIZE],
                recomputed=hashes[first] if first < len(hashes) else None,
            )
        self.tiles_checked += 1

    def finish(self) -> None:
        """Check the partial tiles (``floor(size / 256**L) mod 256`` wide) of every level."""
        for level, buf in enumerate(self.levels):
            if buf:
                self._check(TilePath(level, self.full_tiles[level], len(buf)), buf, None)

    def root(self) -> bytes:
        """The root of the tree of the leaves added so far."""
        ranges: list[bytes] = []
        for buf in reversed(self.levels):
            start, width = 0, len(buf)
            for bit in reversed(range(TILE_HEIGHT)):
                if width & (1 << bit):
                    ranges.append(_perfect_root(buf[start : start + (1 << bit)]))
                    start += 1 << bit
        return fold_range(ranges) if ranges else EMPTY_ROOT


def _bundles(
    client: LogClient, size: int, pool: ThreadPoolExecutor
) -> Iterator[tuple[int, list[bytes], bytes]]:
    """Entry bundles with their level-0 tiles, in order, fetched a few ahead."""

    def fetch(n: int) -> tuple[int, list[bytes], bytes]:
        width = min(TILE_WIDTH, size - n * TILE_WIDTH)
        entries = client.read_bundle(TilePath("entries", n, width))
        return n, entries, client.read_tile(TilePath(0, n, width))

    count = -(-size // TILE_WIDTH)
    pending: deque[Future[tuple[int, list[bytes], bytes]]] = deque()
    next_n = 0
    while next_n < count or pending:
        while next_n < count and len(pending) < _PREFETCH:
            pending.append(pool.submit(fetch, next_n))
            next_n += 1
        yield pending.popleft().result()


def _check_previous(previous: AuditState | None, cp: Checkpoint) -> None:
    if previous is None:
        return
    if previous.origin != cp.origin:
        raise FormatError("the state file is for another log", state=previous.origin, log=cp.origin)
    if cp.size < previous.size:
        raise LogInconsistencyError(
            "rollback: the log is smaller than when last audited",
            check=Check.ROLLBACK,
            previous_size=previous.size,
            size=cp.size,
            previous_checkpoint=previous.checkpoint,
        )
    if cp.size == previous.size and cp.root_hash != previous.root_hash:
        raise LogInconsistencyError(
            "split view: same size as last audited, different root",
            check=Check.SPLIT_VIEW,
            size=cp.size,
            previous_root=previous.root_hash,
            root=cp.root_hash,
            previous_checkpoint=previous.checkpoint,
        )


def audit(
    source: str | TileSource,
    log_verifier: NoteVerifier,
    *,
    state_path: Path | None = None,
    witnesses: Sequence[CosignatureVerifier] = (),
    quorum: int = 0,
    progress: ProgressCallback | None = None,
    on_entry: EntryCallback | None = None,
) -> AuditReport:
    """Replay the whole log at ``source`` and verify it (see the module docstring).

    ``on_entry`` sees every entry once, in order (see :data:`EntryCallback`), after its bundle
    was hashed into the replay; the entries are proven to be the signed log's only when
    :func:`audit` returns, so a caller trusts what it folded only then.

    Raises :class:`SignatureError` for a bad checkpoint, :class:`LogInconsistencyError` for a tile
    that disagrees with the entries, a rollback or a split view, :class:`RootMismatchError` when
    the entries do not hash to the checkpoint's root. The state file is only updated on success.
    """
    with LogClient(source, log_verifier, witnesses=witnesses, quorum=quorum) as client:
        return _audit(client, state_path, progress, on_entry)


def _audit(
    client: LogClient,
    state_path: Path | None,
    progress: ProgressCallback | None,
    on_entry: EntryCallback | None = None,
) -> AuditReport:
    started = time.perf_counter()
    # 1. The checkpoint, signed by the log (and the witness quorum).
    signed: SignedCheckpoint = client.checkpoint()
    cp = signed.checkpoint
    # 2. Rollback and split view against the previous run, before downloading anything.
    previous = AuditState.load(state_path) if state_path else None
    _check_previous(previous, cp)
    mark = previous.size if previous else None
    root_at_mark = EMPTY_ROOT if mark == 0 else None
    # 3. Replay the entries; check every tile.
    replay = _TreeReplay(client.read_tile)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="veriml-audit") as pool:
        for n, entries, tile0 in _bundles(client, cp.size, pool):
            hashes = [leaf_hash(e) for e in entries]
            start = n * TILE_WIDTH
            if mark is not None and start < mark <= start + len(hashes):
                split = mark - start
                if split < len(hashes):
                    replay.add(hashes[:split])
                    root_at_mark = replay.root()
                    replay.add(hashes[split:], tile0)
                else:
                    replay.add(hashes, tile0)
                    root_at_mark = replay.root()
            else:
                replay.add(hashes, tile0)
            if on_entry is not None:
                for offset, entry in enumerate(entries):
                    on_entry(start + offset, entry)
            if progress is not None:
                progress(replay.size, cp.size)
    replay.finish()
    # 4. The recomputed roots: now, and at the previous size.
    root = replay.root()
    if root != cp.root_hash:
        raise RootMismatchError(
            "the entries do not hash to the checkpoint's root",
            check=Check.ROOT,
            expected=cp.root_hash,
            calculated=root,
        )
    if previous is not None and root_at_mark != previous.root_hash:
        raise LogInconsistencyError(
            "split view: the log's tree at the previously audited size has another root",
            check=Check.CONSISTENCY,
            previous_size=previous.size,
            previous_root=previous.root_hash,
            recomputed_root=root_at_mark,
            previous_checkpoint=previous.checkpoint,
        )
    # 5. Remember this checkpoint for next time.
    if state_path is not None:
        AuditState(cp.origin, cp.size, cp.root_hash, signed.note.decode()).save(state_path)
    return AuditReport(
        origin=cp.origin,
        size=cp.size,
        root_hash=cp.root_hash,
        previous_size=previous.size if previous else None,
        entries=replay.size,
        tiles=replay.tiles_checked,
        seconds=time.perf_counter() - started,
        witnesses=signed.witnesses,
    )
