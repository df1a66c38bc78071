"""Batching sequencer: entries in, durable indexes out.

Callers hand entries to a :class:`Sequencer` (``add`` blocks, ``add_async`` awaits). A single
background thread gathers up to ``batch_size`` entries, or whatever arrived within
``max_interval`` seconds of the first one, and integrates the batch with
:func:`integrate_batch` in **one database transaction**: the entries, the tile hashes they
complete or extend, and a checkpoint for the new size signed with the log's note key. Only after
that transaction commits is any caller told its index; if it fails, every caller in the batch
gets the error and nothing is acknowledged.

``add_many`` hands over a **group**: its entries go into one batch, next to each other and in
order, so they get consecutive indexes and are committed (or refused) together. The ledger
relies on it: a dispute's verdict and its settlement are one group, and an auditor folding the
log finds the settlement right after the verdict.

The transaction takes the database's write lock and re-reads the tree state inside it (see
:mod:`veriml.tlog.storage`), so several sequencers — threads, processes, server replicas —
on one database extend one log; none of them trusts a state it read before the lock.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from veriml.core.errors import Error, StorageError
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.merkle import HASH_SIZE, CompactRange, NodeID, leaf_hash
from veriml.tlog.note import NoteSigner, sign_note
from veriml.tlog.storage import LogStorage, WriteTxn, check_entry
from veriml.tlog.tiles import TILE_HEIGHT, TILE_WIDTH

__all__ = [
    "Integrated",
    "Publisher",
    "Sequencer",
    "TileGrowth",
    "grow_tiles",
    "integrate_batch",
    "partial_tiles",
    "sign_checkpoint",
]

_log = logging.getLogger(__name__)


Publisher = Callable[[int, bytes], bytes | None]
"""Called after a commit with (size, signed note); returns the note to publish or ``None``."""

PUBLISH_RETRY = (0.25, 5.0)
"""Seconds before a checkpoint the publisher refused is offered again: the first delay, doubled
after each failure up to the second."""


def partial_tiles(size: int) -> list[tuple[int, int, int]]:
    """``(level, index, width)`` of the non-empty partial tiles of a tree of ``size``.

    Per C2SP tlog-tiles the partial tile at level ``l`` has ``floor(size / 256**l) mod 256``
    hashes (https://c2sp.org/tlog-tiles#partial-tiles).
    """
    out: list[tuple[int, int, int]] = []
    level = 0
    count = size
    while count:
        width = count % TILE_WIDTH
        if width:
            out.append((level, count // TILE_WIDTH, width))
        count //= TILE_WIDTH
        level += 1
    return out


@dataclass(frozen=True, slots=True)
class TileGrowth:
    """The result of appending leaves: the new compact range and every tile that changed."""

    size: int
    range_hashes: tuple[bytes, ...]
    root_hash: bytes
    tiles: Mapping[tuple[int, int], bytes] = field(default_factory=dict)


def grow_tiles(
    size: int,
    range_hashes: Sequence[bytes],
    leaf_hashes: Sequence[bytes],
    stored_partials: Mapping[tuple[int, int], bytes],
) -> TileGrowth:
    """Append ``leaf_hashes`` to a tree of ``size``; pure, no I/O.

    ``stored_partials`` holds the current partial tiles (as :func:`partial_tiles` names them).
    A node completed at level ``8L`` is hash ``index mod 256`` of tile ``(L, index // 256)``,
    so each tile only ever grows at its end; a gap means the stored tiles do not belong to
    this state, which raises :class:`StorageError` instead of writing a corrupt tree.
    """
    tiles: dict[tuple[int, int], bytearray] = {}
    for level, index, width in partial_tiles(size):
        stored = stored_partials.get((level, index))
        if stored is None or len(stored) < width * HASH_SIZE:
            raise StorageError(
                "stored partial tile is missing or short",
                level=level,
                index=index,
                width=width,
                found=None if stored is None else len(stored) // HASH_SIZE,
            )
        tiles[(level, index)] = bytearray(stored[: width * HASH_SIZE])
    touched: set[tuple[int, int]] = set()

    def visit(node: NodeID, node_hash: bytes) -> None:
        if node.level % TILE_HEIGHT:
            return
        key = (node.level // TILE_HEIGHT, node.index // TILE_WIDTH)
        buf = tiles.setdefault(key, bytearray())
        if len(buf) != (node.index % TILE_WIDTH) * HASH_SIZE:
            raise StorageError(
                "tile hashes out of order", level=key[0], index=key[1], at=node.index
            )
        buf += node_hash
        touched.add(key)

    compact = CompactRange.from_hashes(size, list(range_hashes))
    for h in leaf_hashes:
        compact.append(h, visit)
    return TileGrowth(
        size=compact.size,
        range_hashes=tuple(compact.hashes),
        root_hash=compact.root(),
        tiles={key: bytes(tiles[key]) for key in sorted(touched)},
    )


@dataclass(frozen=True, slots=True)
class Integrated:
    """What one committed batch produced."""

    indexes: tuple[int, ...]
    size: int
    root_hash: bytes
    note: bytes
    published: bool


def sign_checkpoint(signer: NoteSigner, origin: str, size: int, root_hash: bytes) -> bytes:
    """The C2SP tlog-checkpoint for (origin, size, root) as a signed note."""
    return sign_note(Checkpoint(origin=origin, size=size, root_hash=root_hash).to_text(), [signer])


def integrate_batch(
    storage: LogStorage,
    signer: NoteSigner,
    entries: Sequence[bytes],
    *,
    dedup: bool = False,
    publish_now: bool = True,
) -> Integrated:
    """Integrate ``entries`` in one transaction; return their indexes once it has committed.

    With ``dedup`` an entry whose leaf hash is already in the log (or earlier in this batch)
    gets the existing index and is not stored again. With ``publish_now`` the new checkpoint
    becomes the served one in the same transaction; otherwise it waits for
    :meth:`LogStorage.publish` (witness cosigning).
    """
    for entry in entries:
        check_entry(entry)
    hashes = [leaf_hash(bytes(e)) for e in entries]
    with storage.write() as txn:
        indexes, new_entries, new_hashes = _assign(txn, entries, hashes, dedup)
        state = txn.state
        if not new_entries:
            note = _current_note(txn, state.size)
            return Integrated(tuple(indexes), state.size, state.root_hash, note, True)
        keys = [(lv, ix) for lv, ix, _ in partial_tiles(state.size)]
        growth = grow_tiles(state.size, state.range_hashes, new_hashes, txn.tiles(keys))
        txn.append_entries(state.size, new_entries, new_hashes)
        txn.put_tiles(growth.tiles)
        note = sign_checkpoint(signer, state.origin, growth.size, growth.root_hash)
        txn.add_checkpoint(growth.size, note)
        txn.set_state(
            size=growth.size,
            range_hashes=growth.range_hashes,
            root_hash=growth.root_hash,
            published_size=growth.size if publish_now else state.published_size,
        )
    return Integrated(tuple(indexes), growth.size, growth.root_hash, note, publish_now)


def _current_note(txn: WriteTxn, size: int) -> bytes:
    """The note already signed for ``size`` (a batch made only of duplicates signs nothing)."""
    found = txn.checkpoint(size)
    if found is None:
        raise StorageError("no checkpoint of the current size", size=size)
    return found


def _assign(
    txn: WriteTxn, entries: Sequence[bytes], hashes: Sequence[bytes], dedup: bool
) -> tuple[list[int], list[bytes], list[bytes]]:
    size = txn.state.size
    if not dedup:
        return list(range(size, size + len(entries))), list(entries), list(hashes)
    known = txn.find_leaves(hashes)
    indexes: list[int] = []
    new_entries: list[bytes] = []
    new_hashes: list[bytes] = []
    for entry, h in zip(entries, hashes, strict=True):
        if h not in known:
            known[h] = size + len(new_entries)
            new_entries.append(entry)
            new_hashes.append(h)
        indexes.append(known[h])
    return indexes, new_entries, new_hashes


@dataclass(slots=True)
class _Pending:
    """One caller's entries (one, or a group kept together) and the future of their indexes."""

    entries: tuple[bytes, ...]
    future: Future[list[int]]


class Sequencer:
    """Batches entries from many threads (and event loops) into durable integrations.

    >>> seq = Sequencer(storage, signer, batch_size=512, max_interval=0.05)  # doctest: +SKIP
    >>> seq.add(b'{"type":"hello"}')  # doctest: +SKIP
    0
    """

    def __init__(
        self,
        storage: LogStorage,
        signer: NoteSigner,
        *,
        batch_size: int = 4096,
        max_interval: float = 0.05,
        dedup: bool = False,
        publisher: Publisher | None = None,
    ) -> None:
        if batch_size < 1 or max_interval < 0:
            raise StorageError("batch size must be ≥ 1 and interval ≥ 0", batch_size=batch_size)
        self._storage = storage
        self._signer = signer
        self._batch_size = batch_size
        self._max_interval = max_interval
        self._dedup = dedup
        self._publisher = publisher
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._closed = threading.Event()
        # Witnesses answer slowly or not at all: publishing runs on its own thread so it never
        # holds up integration, and only the newest checkpoint waiting is pushed.
        self._to_publish: tuple[int, bytes] | None = None
        self._publish_lock = threading.Lock()
        self._retry_delay = PUBLISH_RETRY[0]
        self._wake = threading.Event()  # a newer checkpoint, or close(): stop waiting to retry
        self._publishing = ThreadPoolExecutor(1, thread_name_prefix="veriml-tlog-publish")
        self._thread = threading.Thread(target=self._run, name="veriml-tlog-sequencer", daemon=True)
        self._thread.start()
        if publisher is not None:
            # A checkpoint integrated before a restart but never published is retried now.
            state = storage.state()
            if state.size > state.published_size:
                self._schedule_publish(*storage.checkpoint(state.size))

    def submit(self, entry: bytes) -> Future[int]:
        """Queue ``entry``; the future resolves to its index once durably integrated."""
        group = self.submit_group([entry])
        single: Future[int] = Future()

        def done(f: Future[list[int]]) -> None:
            exc = f.exception()
            if exc is not None:
                single.set_exception(exc)
            else:
                single.set_result(f.result()[0])

        group.add_done_callback(done)
        return single

    def submit_group(self, entries: Sequence[bytes]) -> Future[list[int]]:
        """Queue ``entries`` as one group: integrated in one batch (a group larger than
        ``batch_size`` is a batch of its own), at consecutive indexes in this order, all or
        none. The future resolves to their indexes."""
        if not entries:
            raise StorageError("a group needs at least one entry")
        for entry in entries:
            check_entry(entry)
        if self._closed.is_set():
            raise StorageError("the sequencer is closed")
        future: Future[list[int]] = Future()
        self._queue.put(_Pending(tuple(bytes(e) for e in entries), future))
        return future

    def add(self, entry: bytes, *, timeout: float | None = None) -> int:
        """Integrate ``entry`` and return its index, blocking until the commit."""
        return self.submit(entry).result(timeout)

    def add_many(self, entries: Sequence[bytes], *, timeout: float | None = None) -> list[int]:
        """Integrate ``entries`` as one group (:meth:`submit_group`); their indexes."""
        return self.submit_group(entries).result(timeout)

    async def add_async(self, entry: bytes) -> int:
        """As :meth:`add`, without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(entry))

    async def add_many_async(self, entries: Sequence[bytes]) -> list[int]:
        """As :meth:`add_many`, without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_group(entries))

    def close(self) -> None:
        """Integrate what is queued, then stop the background thread."""
        if not self._closed.is_set():
            self._closed.set()
            self._wake.set()
            self._queue.put(None)
            self._thread.join()
            self._publishing.shutdown(wait=True)

    def _collect(self) -> list[_Pending] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        count = len(first.entries)
        deadline = time.monotonic() + self._max_interval
        while count < self._batch_size:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is None:
                self._queue.put(None)  # seen again by the next _collect, after this batch
                break
            batch.append(item)
            count += len(item.entries)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                break
            self._integrate(batch)
        # Entries that raced with close() are refused, not left waiting.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                item.future.set_exception(StorageError("the sequencer is closed"))

    def _integrate(self, batch: list[_Pending]) -> None:
        try:
            result = integrate_batch(
                self._storage,
                self._signer,
                [entry for p in batch for entry in p.entries],
                dedup=self._dedup,
                publish_now=self._publisher is None,
            )
        except Error as exc:
            for p in batch:
                p.future.set_exception(exc)
            return
        except Exception as exc:  # never leave a caller waiting forever
            wrapped = StorageError("integration failed", reason=repr(exc))
            for p in batch:
                p.future.set_exception(wrapped)
            return
        at = 0
        for p in batch:
            p.future.set_result(list(result.indexes[at : at + len(p.entries)]))
            at += len(p.entries)
        if self._publisher is not None and not result.published:
            self._schedule_publish(result.size, result.note)

    def _schedule_publish(self, size: int, note: bytes) -> None:
        with self._publish_lock:
            if self._to_publish is None or self._to_publish[0] < size:
                self._to_publish = (size, note)
            self._wake.set()
        try:
            self._publishing.submit(self._publish_latest)
        except RuntimeError:  # close() shut the executor down while this batch integrated
            return

    def _publish_latest(self) -> None:
        assert self._publisher is not None
        with self._publish_lock:
            pending, self._to_publish = self._to_publish, None
        if pending is None:
            return  # a newer call already published it
        size, note = pending
        try:
            cosigned = self._publisher(size, note)
            if cosigned is not None:
                self._storage.publish(size, cosigned)
        except Error as exc:
            _log.warning("checkpoint %d not published: %s", size, exc.diagnostics())
            self._retry_publish(size, note)
        else:
            self._retry_delay = PUBLISH_RETRY[0]

    def _retry_publish(self, size: int, note: bytes) -> None:
        """Offer a refused checkpoint again after a growing delay, unless a newer one is
        waiting: witnesses may be down for a while or start after the log, and a log that
        receives no new entry would otherwise never publish what it integrated."""
        with self._publish_lock:
            if self._to_publish is not None:
                return  # the newer one is queued already
            self._to_publish = (size, note)
            delay = self._retry_delay
            self._retry_delay = min(2 * delay, PUBLISH_RETRY[1])
            self._wake.clear()
        # close() sets _closed before _wake: seen here, or it wakes the wait.
        if self._closed.is_set() or (self._wake.wait(delay) and self._closed.is_set()):
            return
        try:
            self._publishing.submit(self._publish_latest)
        except RuntimeError:  # the executor shut down meanwhile
            return
