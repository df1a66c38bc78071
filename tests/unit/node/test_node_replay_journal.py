"""The node's replay journal (docs/node.md, "Replay protection"): admitted job ids survive a
restart within one boot of the machine, so a replay is still refused and a job in flight during
the restart still runs; a journal the node cannot trust (another boot, damage, none at all)
falls back to refusing every job issued before the process started; the files stay bounded;
and one process at a time uses a home."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, StorageError
from veriml.node._memory import HEADER_SIZE, RECORD_SIZE, ReplayCache
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time

T0 = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)
BOOT = uuid.uuid4().bytes
WINDOW = dt.timedelta(minutes=5)


def _job(job_id: str, issued: dt.datetime, *, lifetime: float = 60) -> Job:
    return Job(
        job_id=job_id,
        node_id="sha256:" + "0" * 64,
        request_id="r",
        model=Digest.of(b"model"),
        inputs={},
        policy="none",
        issued_at=format_time(issued),
        expires_at=format_time(issued + dt.timedelta(seconds=lifetime)),
    )


def _start(root: Path, at: dt.datetime, *, boot: bytes = BOOT) -> ReplayCache:
    return ReplayCache(started_at=at, max_validity=WINDOW, journal=root, boot=boot)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_restart_in_the_same_boot_refuses_replays_and_runs_the_jobs_in_flight(
    tmp_path: Path,
) -> None:
    first = _start(tmp_path, _at(0))
    first.admit(_job("ran", _at(1)), now=_at(1))
    first.close()  # what a SIGKILL leaves: every returned write is in the file
    again = _start(tmp_path, _at(10))
    assert again.restored
    with pytest.raises(ConflictError, match="replay"):
        again.admit(_job("ran", _at(1)), now=_at(11))
    again.admit(_job("in-flight", _at(9)), now=_at(11))  # issued before the restart
    with pytest.raises(ConflictError, match="replay"):
        again.admit(_job("in-flight", _at(9)), now=_at(12))


def test_a_journal_from_another_boot_falls_back_to_the_start_time(tmp_path: Path) -> None:
    """The machine went down: unflushed records may be lost, so nothing issued before this
    process started may run."""
    first = _start(tmp_path, _at(0))
    first.admit(_job("ran", _at(1)), now=_at(1))
    first.close()
    again = _start(tmp_path, _at(10), boot=uuid.uuid4().bytes)
    assert not again.restored
    with pytest.raises(ConflictError, match="before this node started"):
        again.admit(_job("in-flight", _at(9)), now=_at(11))
    again.admit(_job("fresh", _at(10)), now=_at(11))


def test_the_floor_of_a_fallback_start_stays_across_later_restarts(tmp_path: Path) -> None:
    """A first start (no journal) refuses what was issued before it; a later restart in the
    same boot keeps that floor, and admits what came after it."""
    first = _start(tmp_path, _at(100))
    assert not first.restored
    first.close()
    again = _start(tmp_path, _at(200))
    assert again.restored
    with pytest.raises(ConflictError, match="before this node started"):
        again.admit(_job("older", _at(99)), now=_at(200))
    again.admit(_job("after-the-first-start", _at(150)), now=_at(200))


@pytest.mark.parametrize("boot", [bytes(16), None], ids=["no-boot-id", "system"])
def test_a_system_without_a_boot_id_never_trusts_the_journal(
    tmp_path: Path, boot: bytes | None
) -> None:
    if boot is None:  # this machine's own boot id: trusted unless it has none
        from veriml.node._memory import UNKNOWN_BOOT, system_boot_id

        if system_boot_id() == UNKNOWN_BOOT:
            pytest.skip("this system has no boot id")
        _start(tmp_path, _at(0), boot=system_boot_id()).close()
        assert _start(tmp_path, _at(1), boot=system_boot_id()).restored
        return
    _start(tmp_path, _at(0), boot=boot).close()
    assert not _start(tmp_path, _at(1), boot=boot).restored


def test_a_torn_last_record_is_dropped_and_damage_is_not_trusted(tmp_path: Path) -> None:
    first = _start(tmp_path, _at(0))
    first.admit(_job("a", _at(1)), now=_at(1))
    first.admit(_job("b", _at(1)), now=_at(1))
    first.close()
    journal = tmp_path / "admitted-0.log"
    with journal.open("ab") as f:  # a write the kill interrupted: its job was never admitted
        f.write(b"\x00" * (RECORD_SIZE // 2))
    torn = _start(tmp_path, _at(2))
    assert torn.restored
    assert len(torn) == 2
    torn.close()
    data = bytearray(journal.read_bytes())
    data[HEADER_SIZE + 3] ^= 0x01  # a bit flipped in the first record
    journal.write_bytes(bytes(data))
    damaged = _start(tmp_path, _at(3))
    assert not damaged.restored
    with pytest.raises(ConflictError, match="before this node started"):
        damaged.admit(_job("c", _at(2)), now=_at(3))


def test_a_second_process_on_the_same_home_is_refused(tmp_path: Path) -> None:
    first = _start(tmp_path, _at(0))
    with pytest.raises(StorageError, match="another node process"):
        _start(tmp_path, _at(1))
    first.close()
    _start(tmp_path, _at(2)).close()


def test_an_id_the_journal_cannot_record_is_not_admitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _start(tmp_path, _at(0))
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", lambda fd, data: len(data) - 1)  # a short write
        with pytest.raises(StorageError):
            cache.admit(_job("j", _at(1)), now=_at(1))
    cache.admit(_job("j", _at(1)), now=_at(2))  # not admitted before: it runs now
    cache.close()
    again = _start(tmp_path, _at(3))
    assert again.restored  # the short write was cut off: the file still lines up
    with pytest.raises(ConflictError, match="replay"):
        again.admit(_job("j", _at(1)), now=_at(4))


def test_the_files_hold_about_two_validity_windows_of_ids(tmp_path: Path) -> None:
    cache = _start(tmp_path, _at(0))
    per_minute = 50
    for minute in range(30):
        for i in range(per_minute):
            at = _at(minute * 60 + i)
            cache.admit(_job(f"{minute}-{i}", at, lifetime=300), now=at)
    cache.close()
    records = sum((p.stat().st_size - HEADER_SIZE) // RECORD_SIZE for p in _files(tmp_path))
    # Two windows of five minutes, plus the minute that straddles each turn.
    assert records <= 2 * 6 * per_minute
    again = _start(tmp_path, _at(30 * 60 - 1))
    assert len(again) == 5 * per_minute  # the unexpired ones, and only those, come back
    with pytest.raises(ConflictError, match="replay"):
        again.admit(_job("25-0", _at(25 * 60), lifetime=300), now=_at(30 * 60 - 1))
    assert len(_files(tmp_path)) == 1  # start-up rewrote them into one


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("admitted-*.log"))


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from("abcdef"), st.just("restart"), st.just("tick")),
        min_size=1,
        max_size=40,
    )
)
def test_each_job_id_is_admitted_once_while_valid_whatever_the_restarts(
    steps: list[str],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clock = 0.0
        cache = _start(root, _at(clock))
        admitted: dict[str, float] = {}
        for step in steps:
            clock += 1
            if step == "restart":
                cache.close()
                cache = _start(root, _at(clock))
                continue
            if step == "tick":
                clock += 20
                continue
            job = _job(step, _at(clock), lifetime=30)
            try:
                cache.admit(job, now=_at(clock))
            except ConflictError:
                # Refused only while an admission of the same job id is still valid.
                assert step in admitted
                assert clock < admitted[step] + 30
                continue
            assert step not in admitted or clock >= admitted[step] + 30
            admitted[step] = clock
        cache.close()
