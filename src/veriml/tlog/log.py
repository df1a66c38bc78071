"""The :class:`Log` facade: one transparency log on one database.

A log writes through a batching :class:`~veriml.tlog.sequencer.Sequencer` and reads proofs,
tiles and entry bundles back from its tiles (C2SP tlog-tiles, https://c2sp.org/tlog-tiles):
a proof is planned with :func:`~veriml.tlog.merkle.inclusion_nodes` /
:func:`~veriml.tlog.merkle.consistency_nodes`, each planned node is recomputed from the one
tile that holds its subtree, and the plan folds them into the proof.

>>> from veriml.core.keys import generate_key
>>> from veriml.tlog.note import NoteSigner
>>> signer = NoteSigner("example.com/log", generate_key())  # doctest: +SKIP
>>> with Log.open("sqlite:///log.db", signer) as log:  # doctest: +SKIP
...     index = log.add(b'{"type":"hello"}')
...     proof = log.inclusion_proof(index, log.size)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from veriml.core.errors import FormatError, NotFoundError, StorageError
from veriml.tlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_SIZE,
    NodeID,
    consistency_nodes,
    inclusion_nodes,
    node_hash,
)
from veriml.tlog.note import NoteSigner
from veriml.tlog.sequencer import Publisher, Sequencer, sign_checkpoint
from veriml.tlog.storage import LogStorage, TreeState
from veriml.tlog.tiles import TILE_HEIGHT, TILE_WIDTH, TilePath, encode_entry_bundle
from veriml.tlog.witness import WitnessClient, collect_cosignatures

__all__ = ["Log", "LogOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LogOptions:
    """How a log sequences: batch size, batch interval (seconds), dedup, tile cache size.

    With ``witnesses``, each new checkpoint is pushed to them (C2SP tlog-witness) after its
    batch commits, and served with the cosignatures that came back; with ``quorum`` > 0 it is
    served only if at least that many witnesses cosigned (otherwise the previous checkpoint
    stays published and the next batch tries again). Without witnesses a checkpoint is
    published in the same transaction that integrates its batch.
    """

    batch_size: int = 4096
    batch_interval: float = 0.05
    dedup: bool = False
    tile_cache: int = 2048
    witnesses: Sequence[WitnessClient] = ()
    quorum: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.batch_interval < 0 or self.tile_cache < 0:
            raise FormatError(
                "batch size must be ≥ 1, batch interval and tile cache ≥ 0",
                batch_size=self.batch_size,
                batch_interval=self.batch_interval,
                tile_cache=self.tile_cache,
            )
        if not 0 <= self.quorum <= len(self.witnesses):
            raise FormatError(
                "quorum must be between 0 and the number of witnesses",
                quorum=self.quorum,
                witnesses=len(self.witnesses),
            )


class Log:
    """A transparency log stored in a database. Build it with :meth:`open`.

    Thread-safe. Sizes given to the read methods are bounded by the integrated tree size;
    servers bound them further by the published checkpoint.
    """

    def __init__(
        self,
        storage: LogStorage,
        state: TreeState,
        signer: NoteSigner | None,
        options: LogOptions,
    ) -> None:
        self._storage = storage
        self._trees: OrderedDict[tuple[int, int], list[list[bytes]]] = OrderedDict()
        self._trees_limit = options.tile_cache
        self._trees_lock = threading.Lock()
        self._known_size = state.size
        self._origin = state.origin
        self._vkey = state.vkey
        self._signer = signer
        self._sequencer: Sequencer | None = None
        if signer is not None:
            self._sequencer = Sequencer(
                storage,
                signer,
                batch_size=options.batch_size,
                max_interval=options.batch_interval,
                dedup=options.dedup,
                publisher=self._witness_publisher(options) if options.witnesses else None,
            )

    def _witness_publisher(self, options: LogOptions) -> Publisher:
        # Sizes each witness last cosigned; 0 at start, corrected by the witness's 409 answer.
        old_sizes: dict[str, int] = {}

        def publish(size: int, note: bytes) -> bytes:
            return collect_cosignatures(
                options.witnesses, old_sizes, self.consistency_proof, note, options.quorum
            )

        return publish

    @classmethod
    def open(
        cls,
        url: str,
        signer: NoteSigner,
        *,
        origin: str | None = None,
        options: LogOptions | None = None,
    ) -> Log:
        """Open the log at ``url``, creating it (with a signed empty checkpoint) if absent.

        ``origin`` defaults to the signer's key name, as C2SP tlog-checkpoint recommends.
        A database holding a log of another origin or key is refused.
        """
        options = options or LogOptions()
        origin = origin or signer.name
        storage = LogStorage(url, tile_cache=options.tile_cache)
        try:
            state = storage.create(
                origin=origin,
                vkey=signer.vkey,
                empty_root=EMPTY_ROOT,
                empty_note=sign_checkpoint(signer, origin, 0, EMPTY_ROOT),
            )
            return cls(storage, state, signer, options)
        except BaseException:
            storage.close()
            raise

    @classmethod
    def open_readonly(cls, url: str, *, tile_cache: int = 2048) -> Log:
        """Open an existing log to read and serve it, without its key (``add`` refuses)."""
        storage = LogStorage(url, tile_cache=tile_cache)
        try:
            state = storage.state()
        except BaseException:
            storage.close()
            raise
        return cls(storage, state, None, LogOptions(tile_cache=tile_cache))

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Integrate what is queued, then release the database."""
        if self._sequencer is not None:
            self._sequencer.close()
        self._storage.close()

    def __enter__(self) -> Log:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- identity and state ---------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._origin

    @property
    def vkey(self) -> str:
        """The log's signed-note verifier key, ``name+hash+base64``."""
        return self._vkey

    @property
    def storage(self) -> LogStorage:
        return self._storage

    @property
    def size(self) -> int:
        """Entries durably integrated (possibly more than the published checkpoint covers)."""
        return self._storage.state().size

    @property
    def published_size(self) -> int:
        return self._storage.state().published_size

    def checkpoint(self) -> bytes:
        """The published signed checkpoint note (with any witness cosignatures)."""
        return self._storage.checkpoint()[1]

    def checkpoint_at(self, size: int) -> bytes:
        """The note signed when the tree reached ``size``."""
        return self._storage.checkpoint(size)[1]

    # -- writing --------------------------------------------------------------------------

    def _writer(self) -> Sequencer:
        if self._sequencer is None:
            raise StorageError("this log was opened read-only", origin=self._origin)
        return self._sequencer

    def add(self, entry: bytes, *, timeout: float | None = None) -> int:
        """Append ``entry`` (at most 65,535 bytes) and return its index once durably integrated."""
        return self._writer().add(entry, timeout=timeout)

    def add_many(self, entries: Sequence[bytes], *, timeout: float | None = None) -> list[int]:
        """Append ``entries`` as one group: committed together, at consecutive indexes in this
        order (unless the log deduplicates and one is already logged)."""
        return self._writer().add_many(entries, timeout=timeout)

    async def add_async(self, entry: bytes) -> int:
        return await self._writer().add_async(entry)

    async def add_many_async(self, entries: Sequence[bytes]) -> list[int]:
        """As :meth:`add_many`, without blocking the event loop."""
        return await self._writer().add_many_async(entries)

    # -- proofs ---------------------------------------------------------------------------

    def _bound(self, size: int, limit: int | None) -> None:
        if not 0 <= size < MAX_SIZE:
            raise FormatError("tree size out of range", size=size)
        if limit is None:
            # The tree only grows: a size already seen needs no database round trip.
            if size <= self._known_size:
                return
            limit = self._known_size = self.size
        if size > limit:
            raise NotFoundError("tree size is beyond the log", size=size, tree_size=limit)

    def inclusion_proof(self, index: int, size: int, *, limit: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.3 inclusion proof of entry ``index`` in the tree of ``size``."""
        self._bound(size, limit)
        if not 0 <= index < size:
            raise FormatError("index must be below the tree size", index=index, size=size)
        plan = inclusion_nodes(index, size)
        return plan.rehash(self._node_hashes(plan.ids))

    def inclusion_proof_by_hash(
        self, leaf_hash: bytes, size: int, *, limit: int | None = None
    ) -> tuple[int, list[bytes]]:
        """The lowest index below ``size`` holding ``leaf_hash``, and its inclusion proof."""
        if len(leaf_hash) != HASH_SIZE:
            raise FormatError("a leaf hash is 32 bytes", length=len(leaf_hash))
        self._bound(size, limit)
        index = self._storage.find_leaf(leaf_hash, size)
        if index is None:
            raise NotFoundError("no entry with that leaf hash", leaf_hash=leaf_hash, size=size)
        return index, self.inclusion_proof(index, size, limit=limit)

    def consistency_proof(self, old: int, new: int, *, limit: int | None = None) -> list[bytes]:
        """RFC 9162 §2.1.4 consistency proof from the tree of ``old`` to that of ``new``."""
        self._bound(new, limit)
        if not 0 <= old <= new:
            raise FormatError("consistency needs 0 ≤ old ≤ new", old=old, new=new)
        if old == 0 or old == new:
            return []
        plan = consistency_nodes(old, new)
        return plan.rehash(self._node_hashes(plan.ids))

    def _node_hashes(self, ids: Sequence[NodeID]) -> list[bytes]:
        # Node (8L + k, i) is node (k, i mod 2**(8-k)) of the subtree held by tile (L, i >> (8-k)).
        spots: list[tuple[tuple[int, int], int, int]] = []
        for node in ids:
            tile_level, k = divmod(node.level, TILE_HEIGHT)
            per_tile = TILE_HEIGHT - k
            spots.append(((tile_level, node.index >> per_tile), k, node.index % (1 << per_tile)))
        need: dict[tuple[int, int], int] = {}
        for key, k, j in spots:
            need[key] = max(need.get(key, 0), ((j + 1) << k) * HASH_SIZE)
        trees = self._tile_trees(need)
        out: list[bytes] = []
        for key, k, j in spots:
            levels = trees[key]
            if k >= len(levels) or j >= len(levels[k]):
                raise StorageError(
                    "a tile needed for the proof is missing or short",
                    level=key[0],
                    index=key[1],
                    have=len(levels[0]),
                    need=need[key] // HASH_SIZE,
                )
            out.append(levels[k][j])
        return out

    def _tile_trees(
        self, need: dict[tuple[int, int], int]
    ) -> dict[tuple[int, int], list[list[bytes]]]:
        """The subtree hashes inside each tile (level 0 = the tile's hashes), cached.

        Tiles only grow, so a cached tree that covers the hashes needed is still exact.
        """
        trees: dict[tuple[int, int], list[list[bytes]]] = {}
        stale: dict[tuple[int, int], int] = {}
        with self._trees_lock:
            for key, length in need.items():
                tree = self._trees.get(key)
                if tree is not None and len(tree[0]) * HASH_SIZE >= length:
                    self._trees.move_to_end(key)
                    trees[key] = tree
                else:
                    stale[key] = length
        if stale:
            fetched = self._storage.tiles(stale)
            built = {key: _subtrees(fetched.get(key, b"")) for key in stale}
            trees.update(built)
            with self._trees_lock:
                self._trees.update(built)
                while len(self._trees) > self._trees_limit:
                    self._trees.popitem(last=False)
        return trees

    # -- tiles ----------------------------------------------------------------------------

    def _tile_width(self, path: TilePath, level: int, size: int) -> int:
        available = (size >> (TILE_HEIGHT * level)) - path.index * TILE_WIDTH
        if available < path.width:
            raise NotFoundError("tile is beyond the tree", path=path.to_path(), tree_size=size)
        return path.width

    def read_tile(self, path: TilePath, *, size: int | None = None) -> bytes:
        """The bytes of hash tile ``path`` as of the tree of ``size`` (default: published).

        A partial tile narrower than the stored one is its prefix: tiles only grow.
        """
        if path.level == "entries":
            return self.read_entry_bundle(path, size=size)
        size = self.published_size if size is None else size
        width = self._tile_width(path, path.level, size)
        key = (path.level, path.index)
        stored = self._storage.tiles({key: width * HASH_SIZE}).get(key)
        if stored is None or len(stored) < width * HASH_SIZE:
            raise StorageError("stored tile is missing or short", path=path.to_path())
        return stored[: width * HASH_SIZE]

    def read_entry_bundle(self, path: TilePath, *, size: int | None = None) -> bytes:
        """Entry bundle ``tile/entries/N[.p/W]``: big-endian uint16 length-prefixed entries."""
        if path.level != "entries":
            raise FormatError("not an entry bundle path", path=path.to_path())
        size = self.published_size if size is None else size
        width = self._tile_width(path, 0, size)
        start = path.index * TILE_WIDTH
        return encode_entry_bundle(self._storage.entries(start, start + width))

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries ``[start, end)`` of the integrated tree."""
        if not 0 <= start <= end <= self.size:
            raise NotFoundError("entries beyond the log", start=start, end=end)
        return self._storage.entries(start, end)


def _subtrees(data: bytes) -> list[list[bytes]]:
    """Every complete subtree hash of a tile's hashes, level by level (level 0 = the hashes)."""
    level = [data[i : i + HASH_SIZE] for i in range(0, len(data) - HASH_SIZE + 1, HASH_SIZE)]
    levels = [level]
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        levels.append(level)
    return levels
