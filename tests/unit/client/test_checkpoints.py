"""The SDK's checkpoint store: the largest checkpoint of each log any process of this user
verified, so a log that forks is caught on the next call, not only within one ``Client``.

The store alone (files, corruption, compare-and-swap between processes), then the client on
top of it, against real logs served on loopback: two logs under one key with different
histories are a fork."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from _servers import serve
from veriml.client import Client
from veriml.client._checkpoints import CheckpointStore
from veriml.core.errors import LogInconsistencyError
from veriml.core.keys import generate_key
from veriml.tlog.client import SignedCheckpoint, verify_checkpoint_note
from veriml.tlog.log import Log
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.server import create_log_app

ORIGIN = "example.com/checkpoints-test"


@dataclass
class Served:
    """A log on loopback at ``url`` (tiles under ``/log/``) and its checkpoints by size."""

    url: str
    log: Log
    notes: dict[int, SignedCheckpoint]

    def grow(self, entries: list[bytes]) -> SignedCheckpoint:
        self.log.add_many(entries)
        signed = verify_checkpoint_note(self.log.checkpoint(), verifier(self.log))
        self.notes[signed.checkpoint.size] = signed
        return signed


def verifier(log: Log) -> NoteVerifier:
    return NoteVerifier.from_vkey(log.vkey)


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "store" / "checkpoints")


def _serve(path: Path, signer: NoteSigner) -> Iterator[Served]:
    with (
        Log.open(f"sqlite:///{path}", signer) as log,
        serve(create_log_app(log, prefix="/log")) as url,
    ):
        yield Served(url, log, {})


@pytest.fixture
def honest(tmp_path: Path, signer: NoteSigner) -> Iterator[Served]:
    yield from _serve(tmp_path / "honest.db", signer)


@pytest.fixture
def fork(tmp_path: Path, signer: NoteSigner) -> Iterator[Served]:
    """The same log key, another history."""
    yield from _serve(tmp_path / "fork.db", signer)


def entries(tag: str, start: int, count: int) -> list[bytes]:
    return [b'{"type":"test","%s":%d}' % (tag.encode(), i) for i in range(start, start + count)]


def client(served: Served, store: CheckpointStore | Path | bool) -> Client:
    folder = store.folder if isinstance(store, CheckpointStore) else store
    return Client(served.url, log_vkey=served.log.vkey, checkpoints=folder)


# -- the store ---------------------------------------------------------------------------------


def test_a_stored_checkpoint_loads_back_verified_and_private(
    store: CheckpointStore, honest: Served
) -> None:
    key = verifier(honest.log)
    assert store.load(key) is None
    signed = honest.grow(entries("a", 0, 3))
    assert store.swap(key, None, signed) is None
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.checkpoint == signed.checkpoint
    assert loaded.note == signed.note  # kept as the log signed it: evidence
    body = json.loads(store.path(key).read_text())
    assert body == {
        "version": 1,
        "log": honest.log.vkey,
        "size": 3,
        "checkpoint": signed.note.decode(),
    }
    assert stat.S_IMODE(store.path(key).stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    assert sorted(p.suffix for p in store.folder.iterdir()) == [".json", ".lock"]  # no temp left


@pytest.mark.parametrize(
    "damage",
    ["truncated", "not-json", "size-edited", "root-edited", "other-key", "other-log", "huge"],
)
def test_a_corrupt_or_forged_file_is_ignored_with_a_warning_and_replaced(
    damage: str,
    store: CheckpointStore,
    honest: Served,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = verifier(honest.log)
    signed = honest.grow(entries("a", 0, 4))
    store.swap(key, None, signed)
    path = store.path(key)
    body = json.loads(path.read_text())
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "not-json":
        path.write_text("checkpoint\n")
    elif damage == "size-edited":
        path.write_text(json.dumps(body | {"size": 9}))
    elif damage == "root-edited":
        lines = body["checkpoint"].split("\n")
        lines[2] = "A" * 43 + "="
        path.write_text(json.dumps(body | {"checkpoint": "\n".join(lines)}))
    elif damage == "other-key":  # a note of the same origin signed by another key
        other = NoteSigner(ORIGIN, generate_key())
        with Log.open(f"sqlite:///{path.parent / 'other.db'}", other) as log:
            log.add_many(entries("x", 0, 4))
            note = log.checkpoint().decode()
        path.write_text(json.dumps(body | {"checkpoint": note}))
    elif damage == "other-log":
        path.write_text(json.dumps(body | {"log": NoteSigner(ORIGIN, generate_key()).vkey}))
    else:
        path.write_text(" " * (2 << 20))
    with caplog.at_level(logging.WARNING, logger="veriml.client._checkpoints"):
        assert store.load(key) is None
    assert "ignoring" in caplog.text
    assert str(path) in caplog.text
    # Never trusted, never a reason to fail: the next verified checkpoint replaces it.
    bigger = honest.grow(entries("a", 4, 1))
    assert store.swap(key, signed.checkpoint, bigger) is None
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.checkpoint.size == 5


def test_swap_is_a_compare_and_swap_and_never_shrinks(
    store: CheckpointStore, honest: Served
) -> None:
    key = verifier(honest.log)
    three = honest.grow(entries("a", 0, 3))
    five = honest.grow(entries("a", 3, 2))
    seven = honest.grow(entries("a", 5, 2))
    assert store.swap(key, None, five) is None
    # Another process stored five since this one read nothing: it gets five back, unchanged.
    other = store.swap(key, None, seven)
    assert other is not None
    assert other.checkpoint.size == 5
    # Having reconciled with five, it stores seven.
    assert store.swap(key, five.checkpoint, seven) is None
    # An older view never replaces a larger one, even by a writer that expected it.
    kept = store.swap(key, seven.checkpoint, three)
    assert kept is not None
    assert kept.checkpoint.size == 7
    # The same checkpoint again is no conflict.
    assert store.swap(key, None, seven) is None
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.checkpoint.size == 7


_WRITER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from veriml.client._checkpoints import CheckpointStore
    from veriml.tlog.client import verify_checkpoint_note
    from veriml.tlog.note import NoteVerifier

    folder, vkey, notes = sys.argv[1], sys.argv[2], json.loads(Path(sys.argv[3]).read_text())
    key = NoteVerifier.from_vkey(vkey)
    store = CheckpointStore(Path(folder))
    expected = None
    for text in notes:  # each writer sees the log grow, and stores each size as a client would
        mine = verify_checkpoint_note(text.encode(), key)
        while True:
            other = store.swap(key, expected, mine)
            if other is None:
                expected = mine.checkpoint
                break
            expected = other.checkpoint  # one history here: the larger one wins
            if other.checkpoint.size >= mine.checkpoint.size:
                break
    """
)


def test_concurrent_writers_in_many_processes_keep_the_largest(
    store: CheckpointStore, honest: Served, tmp_path: Path
) -> None:
    key = verifier(honest.log)
    notes = [honest.grow(entries("a", i, 1)).note.decode() for i in range(24)]
    writers = []
    for w in range(4):
        mine = tmp_path / f"notes-{w}.json"
        # Interleaved sizes: every writer's last note is a different size, the largest is 24.
        mine.write_text(json.dumps(notes[w::4]))
        args = [sys.executable, "-c", _WRITER, str(store.folder), honest.log.vkey, str(mine)]
        writers.append(subprocess.Popen(args))
    for proc in writers:
        assert proc.wait(timeout=120) == 0
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.checkpoint.size == 24


# -- the client on top of it --------------------------------------------------------------------


def test_a_fork_shown_to_a_second_client_with_the_same_store_is_caught(
    store: CheckpointStore, honest: Served, fork: Served
) -> None:
    seen = honest.grow(entries("honest", 0, 5))
    with client(honest, store) as first:
        first._check_consistent(seen)
    shown = fork.grow(entries("fork", 0, 7))  # the same key, another history
    with client(fork, store) as second:
        assert second._known_size() == {"X-Veriml-Log-Size": "5"}
        with pytest.raises(LogInconsistencyError) as caught:
            second._check_consistent(shown)
    assert caught.value.check == "consistency"
    evidence = caught.value.diagnostics()
    assert "old=5" in evidence
    assert "new=7" in evidence
    assert str(store.path(verifier(honest.log))) in evidence  # where the earlier view is kept


def test_without_a_store_each_client_object_starts_afresh(
    tmp_path: Path, honest: Served, fork: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERIML_CACHE_DIR", str(tmp_path / "cache"))
    with client(honest, False) as first:
        first._check_consistent(honest.grow(entries("honest", 0, 5)))
    with client(fork, False) as second:
        assert second._known_size() == {}
        second._check_consistent(fork.grow(entries("fork", 0, 7)))
    assert not (tmp_path / "cache").exists()


def test_the_default_store_is_in_the_cache_dir(
    tmp_path: Path, honest: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERIML_CACHE_DIR", str(tmp_path / "moved"))
    with client(honest, True) as first:
        first._check_consistent(honest.grow(entries("honest", 0, 2)))
    stored = CheckpointStore(tmp_path / "moved" / "checkpoints").load(verifier(honest.log))
    assert stored is not None
    assert stored.checkpoint.size == 2


def test_a_log_that_grew_meanwhile_is_reconciled_and_the_larger_kept(
    store: CheckpointStore, honest: Served
) -> None:
    three = honest.grow(entries("a", 0, 3))
    eight = honest.grow(entries("a", 3, 5))
    key = verifier(honest.log)
    with client(honest, store) as slow:
        slow._known_size()  # read the (empty) store
        store.swap(key, None, eight)  # another process stores a larger checkpoint meanwhile
        slow._check_consistent(three)  # its write conflicts: proven one history from tiles
        assert slow._known_size() == {"X-Veriml-Log-Size": "8"}
    loaded = store.load(key)
    assert loaded is not None
    assert loaded.checkpoint.size == 8


def test_a_fork_stored_by_another_process_meanwhile_is_caught_when_writing(
    store: CheckpointStore, honest: Served, fork: Served
) -> None:
    mine = honest.grow(entries("honest", 0, 3))
    theirs = fork.grow(entries("fork", 0, 6))
    with client(honest, store) as slow:
        slow._known_size()
        store.swap(verifier(honest.log), None, theirs)
        with pytest.raises(LogInconsistencyError) as caught:
            slow._check_consistent(mine)
    assert caught.value.check == "consistency"


def test_a_log_that_shows_less_than_it_signed_before_is_a_rollback(
    store: CheckpointStore, honest: Served, fork: Served
) -> None:
    """The store holds size 6; a log under that key that serves only 4 entries (it lost or
    hid two) cannot prove its checkpoint a prefix of the stored one."""
    key = verifier(honest.log)
    honest.grow(entries("a", 0, 4))
    store.swap(key, None, honest.grow(entries("a", 4, 2)))
    shown = fork.grow(entries("a", 0, 4))  # the first four entries, the same bytes: a prefix
    with client(fork, store) as c, pytest.raises(LogInconsistencyError) as caught:
        c._check_consistent(shown)
    assert "old=4" in caught.value.diagnostics()
    assert "new=6" in caught.value.diagnostics()


def test_the_store_is_read_once_and_written_at_most_once_a_second_and_on_close(
    store: CheckpointStore, honest: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    writes: list[int] = []
    load, swap = CheckpointStore.load, CheckpointStore.swap

    def counted_load(self: CheckpointStore, log: NoteVerifier) -> SignedCheckpoint | None:
        reads.append(1)
        return load(self, log)

    def counted_swap(self: CheckpointStore, log: NoteVerifier, expected, new):  # type: ignore[no-untyped-def]
        writes.append(new.checkpoint.size)
        return swap(self, log, expected, new)

    monkeypatch.setattr(CheckpointStore, "load", counted_load)
    monkeypatch.setattr(CheckpointStore, "swap", counted_swap)
    with client(honest, store) as c:
        for i in range(5):
            c._known_size()
            c._check_consistent(honest.grow(entries("a", i, 1)))
        c._check_consistent(honest.notes[5])  # the same again: nothing to write
        assert reads == [1]
        assert writes == [1]  # the first at once; the next ones wait for the second to pass
    assert writes == [1, 5]  # and the largest on close
