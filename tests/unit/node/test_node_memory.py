"""The node's memory: each job id is admitted once until it expires. Its evidence: traces live
on disk for their retention (the answer's challenge window) and within their byte budget,
oldest out first, across restarts; the answered requests it remembers survive restarts too."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.core.errors import ConflictError, NotFoundError, VerificationError
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.node._evidence import AnsweredRequests, TraceStore
from veriml.node._memory import ReplayCache
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.runtime import Trace, TraceEntry

T0 = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)
MODEL = Digest.of(b"model")


def _job(job_id: str, *, issued: dt.datetime = T0, lifetime: float = 60) -> Job:
    return Job(
        job_id=job_id,
        node_id="sha256:" + "0" * 64,
        request_id="r",
        model=MODEL,
        inputs={},
        policy="none",
        issued_at=format_time(issued),
        expires_at=format_time(issued + dt.timedelta(seconds=lifetime)),
    )


def _cache() -> ReplayCache:
    started = T0 - dt.timedelta(seconds=1)
    return ReplayCache(started_at=started, max_validity=dt.timedelta(minutes=5))


@given(st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=30))
def test_each_job_id_is_admitted_once_while_it_is_valid(ids: list[str]) -> None:
    cache = _cache()
    admitted = []
    for job_id in ids:
        try:
            cache.admit(_job(job_id), now=T0)
            admitted.append(job_id)
        except ConflictError:
            assert job_id in admitted
    assert sorted(admitted) == sorted(set(ids))


def test_ids_are_forgotten_once_their_job_expired() -> None:
    cache = _cache()
    for i in range(100):
        cache.admit(_job(f"j{i}", lifetime=10), now=T0)
    assert len(cache) == 100
    later = T0 + dt.timedelta(seconds=11)
    cache.admit(_job("late", issued=later), now=later)
    assert len(cache) == 1


def test_a_job_issued_before_the_node_started_is_a_possible_replay() -> None:
    cache = ReplayCache(started_at=T0, max_validity=dt.timedelta(minutes=5))
    with pytest.raises(ConflictError, match="before this node started"):
        cache.admit(_job("old", issued=T0 - dt.timedelta(milliseconds=1)), now=T0)


def test_a_validity_window_longer_than_the_cap_is_refused() -> None:
    with pytest.raises(VerificationError) as caught:
        _cache().admit(_job("long", lifetime=301), now=T0)
    assert caught.value.check == "job-validity"


class _Clock:
    def __init__(self) -> None:
        self.now = T0.timestamp()

    def __call__(self) -> float:
        return self.now


def _trace(value: float, size: int = 4) -> Trace:
    out = np.full(size, value, dtype=np.float32)
    entry = TraceEntry(0, "Relu", "relu", ("x",), "y", tensor_digest(out))
    return Trace((entry,), {"y": out})


def _store(root: Path, clock: _Clock, **options: float) -> TraceStore:
    settings = {"retention": 100.0, "max_bytes": 1 << 20, "hold": 0.0, **options}
    return TraceStore(root, clock=clock, **settings)  # type: ignore[arg-type]


def _at(seconds: float) -> str:
    return format_time(T0 + dt.timedelta(seconds=seconds))


def test_a_trace_is_served_until_its_retention_ends(tmp_path: Path) -> None:
    clock = _Clock()
    store = _store(tmp_path, clock, retention=10)
    store.put(request_id="r1", job_id="j1", model=MODEL.to_text(), trace=_trace(1))
    clock.now += 9.9
    assert store.get("r1").trace.root == _trace(1).root
    clock.now += 0.1
    with pytest.raises(NotFoundError):
        store.get("r1")
    assert store.total_bytes == 0
    assert list(tmp_path.iterdir()) == []


def test_a_trace_is_kept_until_the_job_s_retain_until_across_a_restart(tmp_path: Path) -> None:
    """The answer's challenge window, not the node's default, decides; and a restarted node
    (a new store on the same folder) still serves the trace, tensors and proofs included."""
    clock = _Clock()
    store = _store(tmp_path, clock, retention=10)
    trace = _trace(2.5)
    store.put(request_id="r", job_id="j", model="m", trace=trace, retain_until=_at(86_400))
    clock.now += 86_399
    again = _store(tmp_path, clock, retention=10)
    kept = again.get("r")
    assert kept.trace.root == trace.root
    assert kept.reveal(0)["root"] == trace.root.to_text()
    assert tensor_digest(tensor_from_json(kept.tensor("y"))) == trace.entries[0].digest
    assert kept.expires_at == _at(86_400)
    clock.now += 1
    with pytest.raises(NotFoundError):
        _store(tmp_path, clock).get("r")


def test_a_read_holds_the_trace_past_its_window(tmp_path: Path) -> None:
    """A dispute opened at the end of the window reads the trace: the read keeps it ``hold``
    seconds more, so the dispute can finish."""
    clock = _Clock()
    store = _store(tmp_path, clock, hold=60)
    store.put(request_id="r", job_id="j", model="m", trace=_trace(1), retain_until=_at(10))
    clock.now += 50
    store.get("r")
    clock.now += 59
    assert store.get("r").job_id == "j"
    clock.now += 60
    assert store.prune() == 1
    with pytest.raises(NotFoundError):
        store.get("r")


def test_a_job_may_not_ask_to_keep_its_trace_longer_than_the_node_keeps_traces(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path, _Clock(), max_retention=7 * 86_400)
    expires = _at(60)  # counted from the job's expiry: optimistic:7d fits exactly
    store.check_retention(_at(60 + 7 * 86_400), expires_at=expires)
    store.check_retention(None, expires_at=expires)
    with pytest.raises(VerificationError) as caught:
        store.check_retention(_at(60 + 7 * 86_400 + 1), expires_at=expires)
    assert caught.value.check == "job-retention"


def test_the_oldest_traces_go_first_when_the_budget_is_full(tmp_path: Path) -> None:
    clock = _Clock()
    probe = _store(tmp_path / "probe", clock)
    probe.put(request_id="r0", job_id="j0", model="m", trace=_trace(0))
    size = probe.total_bytes
    store = _store(tmp_path / "s", clock, max_bytes=3 * size + size // 2)
    for i in range(4):
        clock.now += 1
        store.put(request_id=f"r{i}", job_id=f"j{i}", model="m", trace=_trace(i))
    assert store.total_bytes <= 3 * size + size // 2
    with pytest.raises(NotFoundError):
        store.get("r0")
    assert store.get("r3").job_id == "j3"
    # The order survives a restart: the next one pushes out r1, not r3.
    again = _store(tmp_path / "s", clock, max_bytes=3 * size + size // 2)
    again.put(request_id="r4", job_id="j4", model="m", trace=_trace(4))
    assert {r for r in ("r1", "r2", "r3", "r4") if again.has(r)} == {"r2", "r3", "r4"}


def test_a_trace_larger_than_the_budget_is_not_kept(tmp_path: Path) -> None:
    store = _store(tmp_path, _Clock(), max_bytes=64)
    assert store.put(request_id="big", job_id="j", model="m", trace=_trace(0, size=4)) is None
    with pytest.raises(NotFoundError):
        store.get("big")


def test_a_later_trace_of_a_request_replaces_the_file_whole(tmp_path: Path) -> None:
    store = _store(tmp_path, _Clock())
    store.put(request_id="r", job_id="first", model="m", trace=_trace(1))
    store.put(request_id="r", job_id="again", model="m", trace=_trace(2))
    assert store.get("r").job_id == "again"
    assert len(store) == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_files_a_crash_left_half_written_or_damaged_are_removed_at_start(tmp_path: Path) -> None:
    clock = _Clock()
    store = _store(tmp_path, clock)
    store.put(request_id="r", job_id="j", model="m", trace=_trace(1))
    (tmp_path / ".tmp-0123456789abcdef").write_bytes(b"half a trace")
    (tmp_path / ("0" * 64 + ".trace")).write_bytes(b"veriml-kept-trace/v1\n\xff\xff\xff\xff")
    again = _store(tmp_path, clock)
    assert again.get("r").job_id == "j"
    assert len(again) == 1
    assert len(list(tmp_path.iterdir())) == 1


def test_request_ids_never_reach_a_path(tmp_path: Path) -> None:
    store = _store(tmp_path / "traces", _Clock())
    store.put(request_id="../../escape", job_id="j", model="m", trace=_trace(1))
    assert [p.parent for p in (tmp_path / "traces").iterdir()] == [tmp_path / "traces"]
    assert store.get("../../escape").job_id == "j"


def test_kept_traces_serialise_digests_and_exact_tensors(tmp_path: Path) -> None:
    store = _store(tmp_path, _Clock())
    kept = store.put(request_id="r", job_id="j", model="m", trace=_trace(np.float32(np.nan)))
    assert kept is not None
    body = kept.to_json()
    assert Trace.from_json(body["trace"]).root == kept.trace.root
    assert tensor_digest(tensor_from_json(body["tensors"]["y"])) == kept.trace.entries[0].digest
    with pytest.raises(NotFoundError):
        kept.tensor("no-such-tensor")


def test_answered_requests_are_remembered_across_restarts_and_rotate(tmp_path: Path) -> None:
    answered = AnsweredRequests(tmp_path, max_bytes=65 * 4)
    for i in range(10):
        answered.record(f"req-{i}")
    answered.close()
    again = AnsweredRequests(tmp_path, max_bytes=65 * 4)
    # Two journals of four lines: the newest answers are remembered, the oldest forgotten.
    assert "req-9" in again
    assert "req-8" in again
    assert "req-0" not in again
    assert "never" not in again
    assert all(len(p.read_bytes()) <= 65 * 4 for p in tmp_path.iterdir())
