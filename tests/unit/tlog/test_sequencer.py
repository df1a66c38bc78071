"""The sequencer, on SQLite and PostgreSQL: indexes are durable, checkpoints consistent, and
many writers (threads and processes) build one log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from veriml.core.errors import FormatError, NodeUnavailableError, StorageError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import open_checkpoint
from veriml.tlog.merkle import (
    EMPTY_ROOT,
    consistency_proof,
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
)
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.sequencer import Sequencer, sign_checkpoint
from veriml.tlog.storage import MAX_ENTRY_SIZE, LogStorage

ORIGIN = "example.com/sequencer-test"


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


def open_storage(url: str, signer: NoteSigner) -> LogStorage:
    storage = LogStorage(url)
    storage.create(
        origin=ORIGIN,
        vkey=signer.vkey,
        empty_root=EMPTY_ROOT,
        empty_note=sign_checkpoint(signer, ORIGIN, 0, EMPTY_ROOT),
    )
    return storage


def assert_log_is_sound(storage: LogStorage, signer: NoteSigner) -> list[bytes]:
    """The tree recomputed from the stored entries matches the state, and every checkpoint
    ever signed verifies and is consistent with the latest one."""
    state = storage.state()
    entries = storage.entries(0, state.size)
    leaves = [leaf_hash(e) for e in entries]
    assert state.root_hash == root_from_leaf_hashes(leaves)
    verifier = NoteVerifier.from_vkey(signer.vkey)
    notes = storage.checkpoints()
    assert notes[-1][0] == state.size
    for size, note in notes:
        checkpoint, _ = open_checkpoint(note, verifier, origin=ORIGIN)
        assert checkpoint.size == size
        assert checkpoint.root_hash == root_from_leaf_hashes(leaves[:size])
        if size > 0:
            proof = consistency_proof(size, state.size, leaves)
            verify_consistency(size, state.size, proof, checkpoint.root_hash, state.root_hash)
    return entries


def test_each_entry_is_at_its_acknowledged_index(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, batch_size=64, max_interval=0.01)
    entries = [b'{"n":%d}' % i for i in range(300)]
    futures = [seq.submit(e) for e in entries]
    indexes = [f.result() for f in futures]
    seq.close()
    stored = assert_log_is_sound(storage, signer)
    assert sorted(indexes) == list(range(300))
    for entry, index in zip(entries, indexes, strict=True):
        assert stored[index] == entry
    assert len(storage.checkpoints()) > 2  # one signed checkpoint per batch, plus size 0
    storage.close()


def test_a_group_gets_consecutive_indexes_among_other_writers(
    db_url: str, signer: NoteSigner
) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, batch_size=8, max_interval=0.01)
    singles = [seq.submit(b'{"single":%d}' % i) for i in range(20)]
    group = seq.submit_group([b'{"group":%d}' % i for i in range(5)])
    more = [seq.submit(b'{"after":%d}' % i) for i in range(20)]
    indexes = group.result()
    for f in (*singles, *more):
        f.result()
    seq.close()
    stored = assert_log_is_sound(storage, signer)
    assert indexes == list(range(indexes[0], indexes[0] + 5))
    assert [stored[i] for i in indexes] == [b'{"group":%d}' % i for i in range(5)]
    storage.close()


def test_a_group_larger_than_a_batch_is_one_batch(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, batch_size=4, max_interval=0.0)
    assert seq.add_many([b"%d" % i for i in range(10)]) == list(range(10))
    seq.close()
    assert [size for size, _ in storage.checkpoints()] == [0, 10]
    storage.close()


def test_dedup_returns_the_existing_index(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, batch_size=16, max_interval=0.01, dedup=True)
    first = seq.add(b"same")
    again = seq.add_many([b"other", b"same", b"other"])
    seq.close()
    assert again == [first + 1, first, first + 1]
    assert storage.state().size == 2
    storage.close()


def test_without_dedup_duplicates_get_new_indexes(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, max_interval=0.0)
    assert [seq.add(b"same"), seq.add(b"same")] == [0, 1]
    seq.close()
    storage.close()


def test_async_callers_get_indexes_too(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, max_interval=0.01)

    async def main() -> list[int]:
        return list(await asyncio.gather(*(seq.add_async(b"%d" % i) for i in range(50))))

    assert sorted(asyncio.run(main())) == list(range(50))
    seq.close()
    storage.close()


def test_oversize_entries_are_refused_before_queueing(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer)
    with pytest.raises(FormatError, match="too large"):
        seq.submit(b"x" * (MAX_ENTRY_SIZE + 1))
    seq.close()
    assert storage.state().size == 0
    storage.close()


def test_threads_with_their_own_sequencers_build_one_log(db_url: str, signer: NoteSigner) -> None:
    # Two storages (as two replicas would have) with two sequencers, four threads each.
    storages = [open_storage(db_url, signer) for _ in range(2)]
    sequencers = [Sequencer(s, signer, batch_size=32, max_interval=0.005) for s in storages]
    acked: dict[bytes, int] = {}
    lock = threading.Lock()

    def writer(seq: Sequencer, name: int) -> None:
        for i in range(40):
            entry = b"w%d-%d" % (name, i)
            index = seq.add(entry)
            with lock:
                acked[entry] = index

    threads = [threading.Thread(target=writer, args=(sequencers[n % 2], n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for seq in sequencers:
        seq.close()
    stored = assert_log_is_sound(storages[0], signer)
    assert len(stored) == len(acked) == 320
    assert all(stored[index] == entry for entry, index in acked.items())
    for s in storages:
        s.close()


WRITER = textwrap.dedent(
    """
    import sys
    from veriml.core.keys import load_private_key
    from veriml.tlog.merkle import EMPTY_ROOT
    from veriml.tlog.note import NoteSigner
    from veriml.tlog.sequencer import Sequencer, sign_checkpoint
    from veriml.tlog.storage import LogStorage

    url, key, name, origin = sys.argv[1:5]
    signer = NoteSigner(origin, load_private_key(key.encode()))
    storage = LogStorage(url)
    # Every process creates the log if absent: they race to create one log, not three.
    empty = sign_checkpoint(signer, origin, 0, EMPTY_ROOT)
    storage.create(origin=origin, vkey=signer.vkey, empty_root=EMPTY_ROOT, empty_note=empty)
    seq = Sequencer(storage, signer, batch_size=16, max_interval=0.002)
    for i in range(60):
        entry = f"{name}-{i}".encode()
        print(entry.decode(), seq.add(entry), flush=True)
    seq.close()
    storage.close()
    """
)


@pytest.mark.slow
def test_processes_on_one_database_build_one_log(db_url: str, signer: NoteSigner) -> None:
    key_pem = signer.key.to_pem().decode()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, key_pem, f"p{n}", ORIGIN],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    acked: dict[bytes, int] = {}
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for line in out.splitlines():
            entry, index = line.split()
            acked[entry.encode()] = int(index)
    storage = open_storage(db_url, signer)
    stored = assert_log_is_sound(storage, signer)
    assert len(stored) == len(acked) == 180
    assert all(stored[index] == entry for entry, index in acked.items())
    storage.close()


def test_a_failed_integration_acknowledges_nothing(db_url: str, signer: NoteSigner) -> None:
    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, max_interval=0.01)
    assert seq.add(b"before") == 0
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE tlog_tiles RENAME TO tlog_tiles_away")
    futures = [seq.submit(b"lost-%d" % i) for i in range(5)]
    for future in futures:
        with pytest.raises(StorageError):
            future.result(timeout=30)
    with storage.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE tlog_tiles_away RENAME TO tlog_tiles")
    # Nothing of the failed batch was stored, and the log carries on from where it was.
    assert storage.state().size == 1
    assert seq.add(b"after") == 1
    seq.close()
    assert assert_log_is_sound(storage, signer) == [b"before", b"after"]
    storage.close()


def test_a_checkpoint_the_witnesses_refused_is_published_once_they_answer_without_a_new_entry(
    db_url: str, signer: NoteSigner
) -> None:
    """A witnessed log whose witness is down (or not started yet) must not stay stuck at an old
    checkpoint until the next entry arrives: the refused checkpoint is offered again."""
    up = threading.Event()
    offered: list[int] = []

    def publisher(size: int, note: bytes) -> bytes:
        offered.append(size)
        if not up.is_set():
            raise NodeUnavailableError("witness unreachable")
        return note

    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, max_interval=0.01, publisher=publisher)
    assert seq.add_many([b"a", b"b"]) == [0, 1]
    deadline = time.monotonic() + 10
    while not offered and time.monotonic() < deadline:
        time.sleep(0.01)
    assert storage.state().published_size == 0
    up.set()  # no new entry: only the retry can publish size 2
    while storage.state().published_size < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert storage.state().published_size == 2
    assert offered[-1] == 2
    assert len(offered) >= 2
    seq.close()
    storage.close()


def test_close_does_not_wait_for_a_pending_publish_retry(db_url: str, signer: NoteSigner) -> None:
    def refuse(size: int, note: bytes) -> bytes:
        raise NodeUnavailableError("witness unreachable")

    storage = open_storage(db_url, signer)
    seq = Sequencer(storage, signer, max_interval=0.01, publisher=refuse)
    seq.add(b"a")
    time.sleep(0.1)
    started = time.monotonic()
    seq.close()
    assert time.monotonic() - started < 2
    assert storage.state().published_size == 0
    storage.close()
