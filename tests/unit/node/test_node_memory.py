"""The node's memory: each job id is admitted once until it expires; traces live for their
retention and within their byte budget, oldest out first."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.core.errors import Conflict, NotFound, VerificationError
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.node._memory import ReplayCache, TraceStore
from veriml.protocol.messages import Job, format_time
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
        except Conflict:
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
    with pytest.raises(Conflict, match="before this node started"):
        cache.admit(_job("old", issued=T0 - dt.timedelta(milliseconds=1)), now=T0)


def test_a_validity_window_longer_than_the_cap_is_refused() -> None:
    with pytest.raises(VerificationError) as caught:
        _cache().admit(_job("long", lifetime=301), now=T0)
    assert caught.value.check == "job-validity"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trace(value: float, size: int = 4) -> Trace:
    out = np.full(size, value, dtype=np.float32)
    entry = TraceEntry(0, "Relu", "relu", ("x",), "y", tensor_digest(out))
    return Trace((entry,), {"y": out})


def test_a_trace_is_served_until_its_retention_ends() -> None:
    clock = _Clock()
    store = TraceStore(retention=10, max_bytes=1 << 20, clock=clock)
    store.put(request_id="r1", job_id="j1", model=MODEL.to_text(), trace=_trace(1))
    clock.now = 9.9
    assert store.get("r1").trace.root == _trace(1).root
    clock.now = 10.0
    with pytest.raises(NotFound):
        store.get("r1")
    assert store.bytes == 0


def test_the_oldest_traces_go_first_when_the_budget_is_full() -> None:
    store = TraceStore(retention=100, max_bytes=40, clock=_Clock())
    for i in range(3):
        store.put(request_id=f"r{i}", job_id=f"j{i}", model="m", trace=_trace(i, size=4))
    store.put(request_id="r3", job_id="j3", model="m", trace=_trace(3, size=4))
    assert store.bytes <= 40
    with pytest.raises(NotFound):
        store.get("r0")
    assert store.get("r3").job_id == "j3"


def test_a_trace_larger_than_the_budget_is_not_kept() -> None:
    store = TraceStore(retention=100, max_bytes=8, clock=_Clock())
    assert store.put(request_id="big", job_id="j", model="m", trace=_trace(0, size=4)) is None
    with pytest.raises(NotFound):
        store.get("big")


def test_kept_traces_serialise_digests_and_exact_tensors() -> None:
    store = TraceStore(retention=100, max_bytes=1 << 20, clock=_Clock())
    kept = store.put(request_id="r", job_id="j", model="m", trace=_trace(np.float32(np.nan)))
    assert kept is not None
    body = kept.to_json()
    assert Trace.from_json(body["trace"]).root == kept.trace.root
    assert tensor_digest(tensor_from_json(body["tensors"]["y"])) == kept.trace.entries[0].digest
