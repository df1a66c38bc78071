"""Log storage: tile growth is exact, state survives restarts, bad input never gets stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veriml.core.errors import FormatError, NotFoundError, StorageError
from veriml.core.keys import generate_key
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_from_leaf_hashes,
)
from veriml.tlog.note import NoteSigner
from veriml.tlog.sequencer import grow_tiles, integrate_batch, partial_tiles, sign_checkpoint
from veriml.tlog.storage import MAX_ENTRY_SIZE, LogStorage, check_entry

ORIGIN = "example.com/storage-test"


def tiles_from_scratch(leaves: list[bytes]) -> dict[tuple[int, int], bytes]:
    """Every tile of a tree, straight from the tlog-tiles definition (MTH of 256**l leaves)."""
    tiles: dict[tuple[int, int], bytes] = {}
    level, hashes = 0, leaves
    while hashes:
        for start in range(0, len(hashes), 256):
            tiles[(level, start // 256)] = b"".join(hashes[start : start + 256])
        hashes = [
            root_from_leaf_hashes(hashes[i : i + 256]) for i in range(0, len(hashes) - 255, 256)
        ]
        level += 1
    return tiles


def test_partial_tiles_follow_the_spec_example() -> None:
    # tlog-tiles: size 70,000 has a level-0 partial of 112, level-1 of 17, level-2 of 1.
    assert partial_tiles(70_000) == [(0, 273, 112), (1, 1, 17), (2, 0, 1)]
    assert partial_tiles(256) == [(1, 0, 1)]
    assert partial_tiles(0) == []


@settings(max_examples=40, deadline=None)
@given(batches=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=5))
def test_tiles_grown_batch_by_batch_equal_tiles_built_from_scratch(batches: list[int]) -> None:
    leaves: list[bytes] = []
    stored: dict[tuple[int, int], bytes] = {}
    size, rng = 0, ()
    for count in batches:
        new = [leaf_hash(str(len(leaves) + i).encode()) for i in range(count)]
        partials = {(lv, ix): stored[(lv, ix)] for lv, ix, _ in partial_tiles(size)}
        growth = grow_tiles(size, rng, new, partials)
        stored.update(growth.tiles)
        leaves += new
        size, rng = growth.size, growth.range_hashes
        assert growth.root_hash == root_from_leaf_hashes(leaves)
    assert size == len(leaves)
    assert stored == tiles_from_scratch(leaves)


def test_growing_from_a_missing_partial_tile_is_refused() -> None:
    leaves = [leaf_hash(bytes([i])) for i in range(10)]
    growth = grow_tiles(0, (), leaves, {})
    with pytest.raises(StorageError, match="partial tile"):
        grow_tiles(growth.size, growth.range_hashes, [leaf_hash(b"x")], {})


def test_entries_over_64_kib_are_refused() -> None:
    check_entry(b"x" * MAX_ENTRY_SIZE)
    with pytest.raises(FormatError, match="too large"):
        check_entry(b"x" * (MAX_ENTRY_SIZE + 1))


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


def _create(storage: LogStorage, signer: NoteSigner, origin: str = ORIGIN) -> None:
    storage.create(
        origin=origin,
        vkey=signer.vkey,
        empty_root=EMPTY_ROOT,
        empty_note=sign_checkpoint(signer, origin, 0, EMPTY_ROOT),
    )


def test_oversize_entry_in_a_batch_stores_nothing(db_url: str, signer: NoteSigner) -> None:
    storage = LogStorage(db_url)
    _create(storage, signer)
    with pytest.raises(FormatError):
        integrate_batch(storage, signer, [b"ok", b"x" * (MAX_ENTRY_SIZE + 1)])
    assert storage.state().size == 0
    storage.close()


def test_state_survives_a_restart_without_rescanning(db_url: str, signer: NoteSigner) -> None:
    url = db_url
    storage = LogStorage(url)
    _create(storage, signer)
    integrate_batch(storage, signer, [b"%d" % i for i in range(300)])
    before = storage.state()
    storage.close()

    reopened = LogStorage(url)
    _create(reopened, signer)  # idempotent on an existing log
    assert reopened.state() == before
    integrate_batch(reopened, signer, [b"more"])
    leaves = [leaf_hash(b"%d" % i) for i in range(300)] + [leaf_hash(b"more")]
    assert reopened.state().root_hash == root_from_leaf_hashes(leaves)
    reopened.close()


def test_a_database_holding_another_log_is_refused(db_url: str, signer: NoteSigner) -> None:
    url = db_url
    storage = LogStorage(url)
    _create(storage, signer)
    with pytest.raises(StorageError, match="another log"):
        _create(storage, signer, origin="example.com/other")
    other = NoteSigner(ORIGIN, generate_key())
    with pytest.raises(StorageError, match="another key"):
        _create(storage, other)
    storage.close()


def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path, signer: NoteSigner) -> None:
    storage = LogStorage(f"sqlite:///{tmp_path}/log.db")
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    storage.close()


def test_an_unusable_url_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="URL"):
        LogStorage("not a url")


PROOF_SIZE = 70_000 // 50  # 1400: five full level-0 tiles, a partial one, a partial level-1


@pytest.fixture(scope="module")
def grown_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Log, list[bytes]]]:
    """A log grown in uneven batches, with proofs read between batches to fill its caches."""
    db = tmp_path_factory.mktemp("proofs") / "log.db"
    signer = NoteSigner(ORIGIN, generate_key())
    entries = [b"e%d" % i for i in range(PROOF_SIZE)]
    with Log.open(f"sqlite:///{db}", signer, options=LogOptions(batch_interval=0.0)) as log:
        done = 0
        for step in (1, 254, 3, 300, 442, 400):
            log.add_many(entries[done : done + step])
            done += step
            log.inclusion_proof(done - 1, done)  # caches partial tiles that later grow
        yield log, [leaf_hash(e) for e in entries]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_proofs_from_stored_tiles_equal_proofs_from_all_leaves(
    grown_log: tuple[Log, list[bytes]], data: st.DataObject
) -> None:
    log, leaves = grown_log
    size = data.draw(st.integers(min_value=1, max_value=PROOF_SIZE), label="size")
    index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
    old = data.draw(st.integers(min_value=1, max_value=size), label="old")
    assert log.inclusion_proof(index, size) == inclusion_proof(index, size, leaves)
    assert log.consistency_proof(old, size) == consistency_proof(old, size, leaves)


def test_a_proof_beyond_the_tree_is_not_found(grown_log: tuple[Log, list[bytes]]) -> None:
    log, _ = grown_log
    with pytest.raises(NotFoundError):
        log.inclusion_proof(0, PROOF_SIZE + 1)
    with pytest.raises(FormatError):
        log.inclusion_proof(PROOF_SIZE, PROOF_SIZE)
