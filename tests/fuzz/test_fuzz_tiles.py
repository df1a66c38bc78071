"""C2SP tlog-tiles: tile paths, hash tiles and entry bundles parse in their one form or are a
FormatError, and a reader given a tampered tile either refuses it or never used it."""

from __future__ import annotations

from _fuzzing import attempt, fuzz_settings, mutate, mutated_bytes
from _fuzzing import byte_edits as edits
from _tlog_examples import ENTRIES, LEAVES
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, VerificationError
from veriml.tlog.merkle import root_from_leaf_hashes
from veriml.tlog.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileHashReader,
    TilePath,
    build_tiles,
    bundles_for_size,
    decode_entry_bundle,
    encode_entry_bundle,
    split_tile_hashes,
    tiles_for_size,
)

TILES = build_tiles(ENTRIES)
PATHS = sorted(TILES)

path_texts = st.one_of(
    st.sampled_from(PATHS),
    mutated_bytes([p.encode() for p in PATHS], [b"x", b"x000/", b".p/", b"entries"]).map(
        lambda b: b.decode("utf-8", "replace")
    ),
    st.builds(
        "tile/{}/{}{}".format,
        st.sampled_from(["0", "1", "63", "64", "entries", "00", "-1"]),
        st.sampled_from(["000", "001", "x001/234", "x000/001", "1", "1234"]),
        st.sampled_from(["", ".p/1", ".p/255", ".p/256", ".p/0", ".p/07"]),
    ),
    st.text(max_size=40),
)


@fuzz_settings()
@given(
    path_texts,
    st.one_of(
        mutated_bytes([TILES[p] for p in PATHS]),
        st.binary(max_size=600),
        st.lists(st.binary(max_size=40), max_size=5).map(
            lambda es: encode_entry_bundle(es or [b""])
        ),
    ),
    st.none() | st.integers(-1, TILE_WIDTH + 1),
)
def test_tile_paths_tiles_and_bundles_parse_in_their_one_form(
    path: str, data: bytes, width: int | None
) -> None:
    size = len(data) + len(path)
    tile, _ = attempt(lambda: TilePath.from_path(path), allowed=(FormatError,), size=size)
    if tile is not None:
        assert tile.to_path() == path
    hashes, _ = attempt(lambda: split_tile_hashes(data, width), allowed=(FormatError,), size=size)
    if hashes is not None:
        assert b"".join(hashes) == data
    entries, _ = attempt(
        lambda: decode_entry_bundle(data, width), allowed=(FormatError,), size=size
    )
    if entries is not None:
        assert encode_entry_bundle(entries) == data


# The reader is told a tree size and its root, then fed honest tiles except one, mutated.
SIZES = (1, 2, 255, 256, 257, 511, 512, 513, 600)
ROOTS = {size: root_from_leaf_hashes(LEAVES[:size]) for size in SIZES}


def _level_hashes(level: int) -> list[bytes]:
    hashes = LEAVES
    for _ in range(level):
        hashes = [
            root_from_leaf_hashes(hashes[n : n + TILE_WIDTH])
            for n in range(0, len(hashes) - TILE_WIDTH + 1, TILE_WIDTH)
        ]
    return hashes


LEVELS = [_level_hashes(level) for level in range(2)]


def honest(tile: TilePath) -> bytes:
    start = tile.index << TILE_HEIGHT
    if tile.is_entries:
        return encode_entry_bundle(ENTRIES[start : start + tile.width])
    assert isinstance(tile.level, int)
    return b"".join(LEVELS[tile.level][start : start + tile.width])


def _read_everything(reader: TileHashReader, size: int) -> tuple[object, ...]:
    tiles = [reader.read_tile(t.level, t.index) for t in tiles_for_size(size)]  # type: ignore[arg-type]
    bundles = [reader.read_entry_bundle(b.index) for b in bundles_for_size(size)]
    proofs = [reader.inclusion_proof(i) for i in {0, size // 2, size - 1}]
    consistency = [reader.consistency_proof(old) for old in {1, size // 3, size} if old]
    return tiles, bundles, proofs, consistency


@fuzz_settings()
@given(st.sampled_from(SIZES), st.integers(0, 20), edits(), st.integers(0, 3))
def test_a_reader_refuses_a_tampered_tile_or_never_uses_it(
    size: int, which: int, changes: list[tuple[str, float, bytes]], how: int
) -> None:
    served = [*tiles_for_size(size), *bundles_for_size(size)]
    target = served[which % len(served)]
    tampered = mutate(honest(target), changes) if how else b""
    if how == 3:  # a tile fetched for the wrong width, whole
        tampered = honest(TilePath(target.level, target.index))
    used: list[TilePath] = []

    def fetch(tile: TilePath) -> bytes:
        used.append(tile)
        return tampered if tile == target else honest(tile)

    def read() -> tuple[object, ...]:
        return _read_everything(TileHashReader(size, ROOTS[size], fetch), size)

    got, _error = attempt(read, allowed=(FormatError, VerificationError), size=len(tampered))
    if got is not None:
        reader = TileHashReader(size, ROOTS[size], honest)
        assert got == _read_everything(reader, size)
        assert target not in used or tampered == honest(target)
    else:
        assert tampered != honest(target)
