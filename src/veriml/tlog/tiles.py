"""C2SP tlog-tiles: tile paths, tile and entry-bundle encodings, and a verifying tile reader.

Follows https://c2sp.org/tlog-tiles, "Merkle Tree" and "Log entries": the tree is served as
tiles of 256 consecutive hashes (tile ``(L, N)`` holds the level-``8L`` node hashes
``N*256 .. N*256+255``), at ``tile/<L>/<N>[.p/<W>]``, and the entries as bundles of big-endian
uint16 length-prefixed entries at ``tile/entries/<N>[.p/<W>]``. ``<N>`` is written in 3-digit
groups, all but the last prefixed with ``x`` (1234067 is ``x001/x234/067``).

:func:`build_tiles` writes a whole tree as ``{path: bytes}`` (the same bytes as Go's
``golang.org/x/mod/sumdb/tlog``); :class:`TileHashReader` reads node hashes from tiles and
authenticates every tile it uses against a checkpoint's root, as Go's ``tlog.TileHashReader``.

Pure logic: fetching is a callable supplied by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from veriml.core.errors import Check, FormatError, RootMismatchError, VerificationError
from veriml.tlog.merkle import (
    HASH_SIZE,
    MAX_SIZE,
    NodeID,
    consistency_nodes,
    inclusion_nodes,
    leaf_hash,
    range_nodes,
    root_from_leaf_hashes,
    root_from_range,
)

__all__ = [
    "MAX_ENTRY_SIZE",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileHashReader",
    "TilePath",
    "build_tiles",
    "bundles_for_size",
    "decode_entry_bundle",
    "encode_entry_bundle",
    "hash_at",
    "node_tile",
    "split_tile_hashes",
    "tile_width",
    "tiles_for_size",
]

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
MAX_ENTRY_SIZE = 0xFFFF  # a uint16 length prefix
_PATH = re.compile(r"tile/(0|[1-9][0-9]?|entries)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([0-9]{1,3}))?")


@dataclass(frozen=True, slots=True, order=True)
class TilePath:
    """A tile (``level`` 0-63) or entry bundle (``level="entries"``), ``width`` hashes wide."""

    level: int | Literal["entries"]
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level != "entries" and not (isinstance(self.level, int) and 0 <= self.level < 64):
            raise FormatError("tile level must be 0-63 or 'entries'", level=self.level)
        if not 0 <= self.index < MAX_SIZE >> TILE_HEIGHT:
            raise FormatError("tile index out of range", index=self.index)
        if not 1 <= self.width <= TILE_WIDTH:
            raise FormatError("tile width must be 1-256", width=self.width)

    @property
    def is_entries(self) -> bool:
        return self.level == "entries"

    @property
    def is_partial(self) -> bool:
        return self.width < TILE_WIDTH

    def to_path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` with ``<N>`` in ``x``-prefixed 3-digit groups."""
        digits = f"{self.index:d}"
        digits = "0" * (-len(digits) % 3) + digits
        groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
        number = "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
        suffix = f".p/{self.width}" if self.is_partial else ""
        return f"tile/{self.level}/{number}{suffix}"

    @classmethod
    def from_path(cls, path: str) -> TilePath:
        """Parse a tile path strictly: only the form :meth:`to_path` writes is accepted."""
        match = _PATH.fullmatch(path) if len(path) < 200 else None
        if match is None:
            raise FormatError("invalid tile path", path=path[:200])
        level_text, number, width_text = match.groups()
        level: int | Literal["entries"] = "entries" if level_text == "entries" else int(level_text)
        index = int(number.replace("x", "").replace("/", ""))
        width = TILE_WIDTH if width_text is None else int(width_text)
        try:
            tile = cls(level, index, width)
        except FormatError as exc:
            raise FormatError("invalid tile path", path=path, reason=exc.message) from exc
        # Reject leading zero groups, "x000/001", ".p/256", ".p/07" and other aliases.
        if tile.to_path() != path:
            raise FormatError("tile path is not in canonical form", path=path)
        return tile


def tile_width(level: int, index: int, size: int) -> int:
    """The width of hash tile ``(level, index)`` in a tree of ``size``; 0 if it is empty."""
    start = index << TILE_HEIGHT
    available = (size >> (TILE_HEIGHT * level)) - start
    return max(0, min(TILE_WIDTH, available))


def tiles_for_size(size: int) -> list[TilePath]:
    """Every hash tile, full and partial, of a tree of ``size``, lowest level first."""
    tiles: list[TilePath] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        count = size >> (TILE_HEIGHT * level)
        tiles.extend(
            TilePath(level, n, min(TILE_WIDTH, count - (n << TILE_HEIGHT)))
            for n in range((count + TILE_WIDTH - 1) >> TILE_HEIGHT)
        )
        level += 1
    return tiles


def bundles_for_size(size: int) -> list[TilePath]:
    """Every entry bundle, full and partial, of a tree of ``size``."""
    return [TilePath("entries", t.index, t.width) for t in tiles_for_size(size) if t.level == 0]


def node_tile(node: NodeID) -> tuple[TilePath, int]:
    """The full-width tile holding ``node``, and the offset of the node's first tile hash.

    A node at level ``8L + k`` is the root of ``2**k`` consecutive hashes of a level-``L``
    tile; :func:`hash_at` recomputes it from them."""
    tile_level, k = divmod(node.level, TILE_HEIGHT)
    first = node.index << k
    return TilePath(tile_level, first >> TILE_HEIGHT), first % TILE_WIDTH


def hash_at(tile_hashes: Sequence[bytes], node: NodeID) -> bytes:
    """The hash of ``node`` from the hashes of the tile :func:`node_tile` names."""
    _, offset = node_tile(node)
    end = offset + (1 << (node.level % TILE_HEIGHT))
    if end > len(tile_hashes):
        raise VerificationError(
            "tile is too narrow for the node",
            check=Check.TILE_WIDTH,
            node=f"{node.level}/{node.index}",
            width=len(tile_hashes),
        )
    return root_from_leaf_hashes(tile_hashes[offset:end])


def split_tile_hashes(data: bytes, width: int | None = None) -> list[bytes]:
    """The hashes of a tile; its length must be a whole number of 1-256 hashes (or ``width``)."""
    count, rest = divmod(len(data), HASH_SIZE)
    if rest or not 1 <= count <= TILE_WIDTH or (width is not None and count != width):
        raise FormatError(
            "tile has the wrong length", length=len(data), expected_width=width or "1-256"
        )
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_entry_bundle(entries: Sequence[bytes]) -> bytes:
    """Entries as big-endian uint16 length-prefixed records (tlog-tiles, "Log entries")."""
    if not 1 <= len(entries) <= TILE_WIDTH:
        raise FormatError("an entry bundle holds 1-256 entries", count=len(entries))
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise FormatError("entry is too large for a bundle", size=len(entry))
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_entry_bundle(data: bytes, width: int | None = None) -> list[bytes]:
    """The entries of a bundle; every byte must belong to an entry, 1-256 (or ``width``) of them."""
    entries: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(entries) == TILE_WIDTH or pos + 2 > len(data):
            raise FormatError("entry bundle has trailing bytes", offset=pos)
        end = pos + 2 + int.from_bytes(data[pos : pos + 2], "big")
        if end > len(data):
            raise FormatError("entry bundle is truncated", offset=pos, length=len(data))
        entries.append(data[pos + 2 : end])
        pos = end
    if not entries or (width is not None and len(entries) != width):
        raise FormatError(
            "entry bundle has the wrong number of entries",
            count=len(entries),
            expected_width=width or "1-256",
        )
    return entries


def build_tiles(entries: Sequence[bytes]) -> dict[str, bytes]:
    """Every hash tile and entry bundle of the tree of ``entries``, as ``{path: bytes}``.

    Partial tiles are those of the final size. The checkpoint is not included: sign
    ``Checkpoint(origin, len(entries), root)`` for it.
    """
    out: dict[str, bytes] = {}
    for n in range(0, len(entries), TILE_WIDTH):
        chunk = entries[n : n + TILE_WIDTH]
        out[TilePath("entries", n >> TILE_HEIGHT, len(chunk)).to_path()] = encode_entry_bundle(
            chunk
        )
    level_hashes = [leaf_hash(e) for e in entries]
    level = 0
    while level_hashes:
        for n in range(0, len(level_hashes), TILE_WIDTH):
            chunk = level_hashes[n : n + TILE_WIDTH]
            out[TilePath(level, n >> TILE_HEIGHT, len(chunk)).to_path()] = b"".join(chunk)
        # A full tile's root is one hash of the tile above; partial tiles are never hashed up.
        level_hashes = [
            root_from_leaf_hashes(level_hashes[n : n + TILE_WIDTH])
            for n in range(0, len(level_hashes) - TILE_WIDTH + 1, TILE_WIDTH)
        ]
        level += 1
    return out


class TileHashReader:
    """Reads node hashes of the tree ``(size, root)`` from tiles, verifying each tile it uses.

    The partial tiles at the right edge are checked by recomputing ``root`` from them; a full
    tile is checked against its hash in the (checked) tile above it. ``fetch(path)`` returns
    the tile's bytes; it is called at most once per tile while the tile stays cached.
    """

    def __init__(
        self,
        size: int,
        root: bytes,
        fetch: Callable[[TilePath], bytes],
        *,
        cache_level0: int = 64,
    ) -> None:
        if not 0 <= size < MAX_SIZE or len(root) != HASH_SIZE:
            raise VerificationError("bad tree size or root", check=Check.TREE, size=size)
        self.size = size
        self.root = root
        self._fetch = fetch
        self._cache: dict[TilePath, list[bytes]] = {}
        self._cache_level0 = cache_level0
        self._check_right_edge()

    def _tile(self, level: int, index: int) -> TilePath:
        width = tile_width(level, index, self.size)
        if width == 0:
            raise VerificationError(
                "tile is beyond the tree",
                check=Check.TILE,
                level=level,
                index=index,
                size=self.size,
            )
        return TilePath(level, index, width)

    def _load(self, tile: TilePath) -> list[bytes]:
        return split_tile_hashes(self._fetch(tile), tile.width)

    def _remember(self, tile: TilePath, hashes: list[bytes]) -> None:
        if tile.level == 0:
            level0 = [t for t in self._cache if t.level == 0 and t.width == TILE_WIDTH]
            for old in level0[: max(0, len(level0) - self._cache_level0 + 1)]:
                del self._cache[old]
        self._cache[tile] = hashes

    def _check_right_edge(self) -> None:
        # 1. Fetch the partial tiles, which hold every node of the tree's right edge.
        edge = [t for t in tiles_for_size(self.size) if t.is_partial]
        tiles = {(t.level, t.index): self._load(t) for t in edge}
        # 2. Recompute the root from those nodes; it must be the checkpoint's.
        hashes = []
        for node in range_nodes(self.size):
            tile, _ = node_tile(node)
            hashes.append(hash_at(tiles[(tile.level, tile.index)], node))
        calculated = root_from_range(hashes)
        if calculated != self.root:
            raise RootMismatchError(
                "tiles at the right edge do not lead to the checkpoint root",
                expected=self.root,
                calculated=calculated,
                check=Check.TILE_ROOT,
            )
        for t in edge:
            self._cache[t] = tiles[(t.level, t.index)]

    def read_tile(self, level: int, index: int) -> list[bytes]:
        """The verified hashes of hash tile ``(level, index)`` at this tree's size."""
        tile = self._tile(level, index)
        cached = self._cache.get(tile)
        if cached is not None:
            return cached
        hashes = self._load(tile)
        # A full tile hashes to node (8L+8, index), read (and verified) from the tile above.
        expected = self.read_hash(NodeID(TILE_HEIGHT * (level + 1), index))
        calculated = root_from_leaf_hashes(hashes)
        if calculated != expected:
            raise RootMismatchError(
                "tile does not match its hash in the tile above",
                expected=expected,
                calculated=calculated,
                check=Check.TILE,
                tile=tile.to_path(),
            )
        self._remember(tile, hashes)
        return hashes

    def read_hash(self, node: NodeID) -> bytes:
        """The verified hash of a complete node of the tree."""
        if node.coverage()[1] > self.size:
            raise VerificationError(
                "node is not complete in this tree",
                check=Check.NODE,
                node=f"{node.level}/{node.index}",
                size=self.size,
            )
        tile, _ = node_tile(node)
        assert isinstance(tile.level, int)  # hash tiles have integer levels
        return hash_at(self.read_tile(tile.level, tile.index), node)

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        return [self.read_hash(node) for node in nodes]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The inclusion proof of leaf ``index``, from verified tiles."""
        plan = inclusion_nodes(index, self.size)
        return plan.rehash(self.read_hashes(plan.ids))

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """The consistency proof from ``old_size`` to this tree, from verified tiles."""
        plan = consistency_nodes(old_size, self.size)
        return plan.rehash(self.read_hashes(plan.ids))

    def check_entry_bundle(self, index: int, data: bytes) -> list[bytes]:
        """Decode entry bundle ``index`` and check every entry against the level-0 tile."""
        width = tile_width(0, index, self.size)
        if width == 0:
            raise VerificationError(
                "entry bundle is beyond the tree", check=Check.BUNDLE, index=index
            )
        entries = decode_entry_bundle(data, width)
        hashes = self.read_tile(0, index)
        for i, (entry, h) in enumerate(zip(entries, hashes, strict=True)):
            if leaf_hash(entry) != h:
                raise RootMismatchError(
                    "entry does not hash to its leaf",
                    expected=h,
                    calculated=leaf_hash(entry),
                    check=Check.ENTRY,
                    index=(index << TILE_HEIGHT) + i,
                )
        return entries

    def read_entry_bundle(self, index: int) -> list[bytes]:
        """Fetch entry bundle ``index`` and return its checked entries."""
        width = tile_width(0, index, self.size)
        if width == 0:
            raise VerificationError(
                "entry bundle is beyond the tree", check=Check.BUNDLE, index=index
            )
        return self.check_entry_bundle(index, self._fetch(TilePath("entries", index, width)))
