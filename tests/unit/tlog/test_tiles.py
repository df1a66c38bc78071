"""C2SP tlog-tiles: paths, encodings, Go's 1000-entry tree and the verifying tile reader."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _vectors import GO_NOTES, GO_TREE, go_tree_files
from veriml.core.errors import FormatError, RootMismatchError, VerificationError
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from veriml.tlog.merkle import (
    NodeID,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_inclusion,
)
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.tiles import (
    TileHashReader,
    TilePath,
    build_tiles,
    bundles_for_size,
    decode_entry_bundle,
    encode_entry_bundle,
    hash_at,
    node_tile,
    split_tile_hashes,
    tiles_for_size,
)

GO_VKEY = "example.com/log+9d2609c6+AbHE3xwXzOkKA81MBX/HTU4u4k3f4qjJxf2NCkWh8ILz"
GO_ENTRIES = [b"entry %d" % i for i in range(1000)]


# --- paths -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (TilePath(0, 1234067), "tile/0/x001/x234/067"),
        (TilePath(0, 1234, 17), "tile/0/x001/234.p/17"),
        (TilePath("entries", 0), "tile/entries/000"),
        (TilePath("entries", 3, 232), "tile/entries/003.p/232"),
        (TilePath(63, 999), "tile/63/999"),
        (TilePath(1, 1000), "tile/1/x001/000"),
    ],
)
def test_tile_paths_follow_the_spec_encoding(tile: TilePath, path: str) -> None:
    assert tile.to_path() == path
    assert TilePath.from_path(path) == tile


@given(
    st.one_of(st.integers(0, 63), st.just("entries")),
    st.integers(0, 2**55 - 1),
    st.integers(1, 256),
)
def test_tile_path_round_trips(level: int | str, index: int, width: int) -> None:
    tile = TilePath(level, index, width)  # type: ignore[arg-type]
    assert TilePath.from_path(tile.to_path()) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",
        "tile/0/0001",
        "tile/0/x000/001",  # leading zero group
        "tile/00/000",
        "tile/64/000",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/07",
        "tile/0/000.p/",
        "tile/0/001/234",  # inner group without x
        "tile/0/x001",
        "tile/entries/000.p/300",
        "/tile/0/000",
        "tile/0/000/",
        "tile/../000",
        "tile/-1/000",
        "tile/0/x" + "999/x" * 30 + "999",  # absurd index
        "checkpoint",
    ],
)
def test_invalid_tile_paths_are_format_errors(path: str) -> None:
    with pytest.raises(FormatError):
        TilePath.from_path(path)


@given(st.text(max_size=60))
def test_parsing_arbitrary_paths_raises_only_format_errors(path: str) -> None:
    try:
        tile = TilePath.from_path(path)
    except FormatError:
        return
    assert tile.to_path() == path


def test_tiles_for_size_matches_the_spec_example() -> None:
    # tlog-tiles, "Partial Tiles": a tree of 70,000 leaves.
    tiles = tiles_for_size(70_000)
    level0 = [t for t in tiles if t.level == 0]
    assert sum(not t.is_partial for t in level0) == 273
    assert [t.width for t in level0 if t.is_partial] == [112]
    assert [t.to_path() for t in tiles if t.level != 0] == [
        "tile/1/000",
        "tile/1/001.p/17",
        "tile/2/000.p/1",
    ]
    assert [t.to_path() for t in tiles_for_size(256)] == ["tile/0/000", "tile/1/000.p/1"]
    assert tiles_for_size(0) == []
    assert bundles_for_size(257) == [TilePath("entries", 0), TilePath("entries", 1, 1)]


def test_node_tile_and_hash_at_recompute_inner_nodes() -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(512)]
    tile, offset = node_tile(NodeID(3, 33))  # leaves 264..271, in level-0 tile 1
    assert (tile, offset) == (TilePath(0, 1), 8)
    assert hash_at(leaves[256:], NodeID(3, 33)) == root_from_leaf_hashes(leaves[264:272])
    assert node_tile(NodeID(9, 0)) == (TilePath(1, 0), 0)


# --- encodings -------------------------------------------------------------------------


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=256))
def test_entry_bundle_round_trips(entries: list[bytes]) -> None:
    data = encode_entry_bundle(entries)
    assert decode_entry_bundle(data, len(entries)) == entries


@given(st.binary(max_size=600))
def test_decoding_arbitrary_bundles_raises_only_format_errors(data: bytes) -> None:
    try:
        entries = decode_entry_bundle(data)
    except FormatError:
        return
    assert encode_entry_bundle(entries) == data


def test_bad_bundles_and_tiles_are_rejected() -> None:
    with pytest.raises(FormatError):
        encode_entry_bundle([b"x" * 65536])
    with pytest.raises(FormatError):
        encode_entry_bundle([])
    with pytest.raises(FormatError, match="truncated"):
        decode_entry_bundle(b"\x00\x05abc")
    with pytest.raises(FormatError, match="trailing"):
        decode_entry_bundle(b"\x00\x01a\x00")
    with pytest.raises(FormatError, match="number"):
        decode_entry_bundle(b"\x00\x01a", 2)
    with pytest.raises(FormatError, match="trailing"):
        decode_entry_bundle(b"\x00\x00" * 257)
    with pytest.raises(FormatError):
        split_tile_hashes(b"\x00" * 33)
    with pytest.raises(FormatError):
        split_tile_hashes(b"")
    with pytest.raises(FormatError):
        split_tile_hashes(b"\x00" * 32 * 257)
    with pytest.raises(FormatError):
        split_tile_hashes(b"\x00" * 64, 3)


# --- Go's tree -------------------------------------------------------------------------


def test_go_tree_checkpoint_verifies_with_the_published_key() -> None:
    data = (GO_TREE / "checkpoint").read_bytes()
    cp, _ = open_checkpoint(data, NoteVerifier.from_vkey(GO_VKEY), origin="example.com/log")
    assert cp.size == 1000
    assert cp.root_hash == root_from_leaf_hashes([leaf_hash(e) for e in GO_ENTRIES])


def test_go_tree_reads_and_every_tile_and_bundle_verifies() -> None:
    cp, _ = open_checkpoint((GO_TREE / "checkpoint").read_bytes(), NoteVerifier.from_vkey(GO_VKEY))
    fetched: list[str] = []

    def fetch(tile: TilePath) -> bytes:
        fetched.append(tile.to_path())
        return (GO_TREE / tile.to_path()).read_bytes()

    reader = TileHashReader(cp.size, cp.root_hash, fetch)
    entries = [e for t in bundles_for_size(cp.size) for e in reader.read_entry_bundle(t.index)]
    assert entries == GO_ENTRIES
    assert sorted(set(fetched)) == sorted(p for p in go_tree_files() if p != "checkpoint")
    leaves = [leaf_hash(e) for e in GO_ENTRIES]
    for index in (0, 255, 256, 767, 768, 999):
        proof = reader.inclusion_proof(index)
        assert proof == inclusion_proof(index, 1000, leaves)
        verify_inclusion(leaves[index], index, 1000, proof, cp.root_hash)
    assert reader.consistency_proof(300) == consistency_proof(300, 1000, leaves)


def test_writer_produces_gos_tree_byte_for_byte() -> None:
    go = go_tree_files()
    built = build_tiles(GO_ENTRIES)
    assert built == {k: v for k, v in go.items() if k != "checkpoint"}
    # The private key of the vector's log is published with the go-sumdb-note vectors.
    notes = json.loads(GO_NOTES.read_text())
    signer = NoteSigner.from_skey(notes["signer_keys"]["example.com/log"])
    assert signer.vkey == GO_VKEY
    root = root_from_leaf_hashes([leaf_hash(e) for e in GO_ENTRIES])
    assert sign_checkpoint(Checkpoint("example.com/log", 1000, root), [signer]) == go["checkpoint"]


@pytest.mark.parametrize(
    "path", ["tile/0/001", "tile/0/003.p/232", "tile/1/000.p/3", "tile/entries/002"]
)
def test_a_tampered_tile_or_bundle_is_detected(path: str) -> None:
    files = go_tree_files()
    data = bytearray(files[path])
    data[37] ^= 1
    files[path] = bytes(data)
    cp = Checkpoint.from_text(files["checkpoint"].decode().split("\n\n")[0] + "\n")

    def read_everything() -> None:
        reader = TileHashReader(cp.size, cp.root_hash, lambda t: files[t.to_path()])
        for t in bundles_for_size(cp.size):
            reader.read_entry_bundle(t.index)

    with pytest.raises(RootMismatchError):
        read_everything()


def test_a_tile_of_the_wrong_length_is_a_format_error() -> None:
    files = go_tree_files()
    files["tile/0/003.p/232"] = files["tile/0/003.p/232"][:-32]
    with pytest.raises(FormatError):
        TileHashReader(1000, b"\x00" * 32, lambda t: files[t.to_path()])


def test_reader_refuses_nodes_and_tiles_beyond_the_tree() -> None:
    files = build_tiles(GO_ENTRIES)
    root = root_from_leaf_hashes([leaf_hash(e) for e in GO_ENTRIES])
    reader = TileHashReader(1000, root, lambda t: files[t.to_path()])
    with pytest.raises(VerificationError):
        reader.read_hash(NodeID(10, 0))
    with pytest.raises(VerificationError):
        reader.read_entry_bundle(4)
    with pytest.raises(VerificationError):
        reader.inclusion_proof(1000)


# --- random trees ----------------------------------------------------------------------


@given(st.integers(0, 1500), st.data())
@settings(max_examples=40, deadline=None)
def test_reader_proofs_from_built_tiles_equal_in_memory_proofs(
    size: int, data: st.DataObject
) -> None:
    entries = [b"e%d" % i for i in range(size)]
    leaves = [leaf_hash(e) for e in entries]
    files = build_tiles(entries)
    assert sorted(files) == sorted(
        t.to_path() for t in tiles_for_size(size) + bundles_for_size(size)
    )
    reader = TileHashReader(size, root_from_leaf_hashes(leaves), lambda t: files[t.to_path()])
    if size == 0:
        return
    index = data.draw(st.integers(0, size - 1))
    assert reader.inclusion_proof(index) == inclusion_proof(index, size, leaves)
    old = data.draw(st.integers(1, size))
    assert reader.consistency_proof(old) == consistency_proof(old, size, leaves)


def test_three_level_tree_reads_through_full_and_partial_tiles() -> None:
    size = 70_000
    entries = [i.to_bytes(4, "big") for i in range(size)]
    leaves = [leaf_hash(e) for e in entries]
    files = build_tiles(entries)
    reader = TileHashReader(size, root_from_leaf_hashes(leaves), lambda t: files[t.to_path()])
    for index in (0, 65_535, 65_536, 69_999):
        verify_inclusion(leaves[index], index, size, reader.inclusion_proof(index), reader.root)
    assert reader.consistency_proof(65_537) == consistency_proof(65_537, size, leaves)
