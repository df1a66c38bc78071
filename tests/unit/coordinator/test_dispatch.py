"""Coordinator -> node dispatch: the signed job, and how each kind of node failure is classed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from _servers import free_port, serve
from veriml.coordinator.nodes.dispatch import JobRejectedError, JobSpec, dispatch, sign_job
from veriml.coordinator.nodes.scheduler import Candidate, retryable
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import NodeUnavailableError, SignatureError, VerificationError
from veriml.core.keys import generate_key
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time

COORDINATOR = generate_key("ed25519")
NODE = generate_key("ed25519")
SPEC = JobSpec(
    request_id="req-1",
    model=Digest.of(b"model"),
    input_digests={"x": Digest.of(b"x")},
    inputs_json={"x": {"dtype": "float32", "shape": [1], "data": [1.0]}},
    policy="quorum:3/2",
)


def candidate(url: str) -> Candidate:
    return Candidate(
        node_id=NODE.key_id,
        operator="op",
        endpoint=url,
        public_key=NODE.public.to_pem().decode(),
        log_index=0,
        last_seen=time.time(),
    )


def test_a_signed_job_opens_at_its_node_and_carries_the_request() -> None:
    now = dt.datetime.now(dt.UTC)
    job, envelope = sign_job(SPEC, NODE.key_id, COORDINATOR, timeout=dt.timedelta(seconds=30))
    opened = Job.open(envelope, COORDINATOR.public, node_id=NODE.key_id)
    assert opened == job
    assert (opened.request_id, opened.model, opened.policy) == ("req-1", SPEC.model, SPEC.policy)
    assert dict(opened.inputs) == dict(SPEC.input_digests)
    with pytest.raises(VerificationError, match="expired"):
        Job.open(
            envelope, COORDINATOR.public, node_id=NODE.key_id, now=now + dt.timedelta(minutes=1)
        )
    with pytest.raises(VerificationError, match="another node"):
        Job.open(envelope, COORDINATOR.public, node_id=COORDINATOR.key_id)
    with pytest.raises(SignatureError):
        Job.open(envelope, NODE.public, node_id=NODE.key_id)


def test_a_traced_job_asks_its_node_to_keep_the_trace_while_the_answer_can_be_challenged() -> None:
    """``optimistic:W``: W after the job expires (the answer's ``final_after`` comes before);
    other policies: the rules' challenge window; untraced jobs keep nothing; an explicit
    ``retain_until`` (a dispute's retrace) wins."""
    now = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
    minute = dt.timedelta(seconds=60)

    def kept(**changes: Any) -> str | None:
        spec = dataclasses.replace(SPEC, **changes)
        return sign_job(spec, NODE.key_id, COORDINATOR, timeout=minute, now=now)[0].retain_until

    expires = now + minute
    assert kept(policy="optimistic:1h", trace=True) == format_time(expires + dt.timedelta(hours=1))
    assert kept(trace=True, challenge_window=86_400.0) == format_time(
        expires + dt.timedelta(days=1)
    )
    assert kept(trace=True) is None  # the node keeps it for its own default
    assert kept(policy="optimistic:1h") is None
    assert kept(trace=True, retain_until="2026-11-27T00:00:00.000000Z") == (
        "2026-11-27T00:00:00.000000Z"
    )


def test_every_job_has_its_own_id() -> None:
    ids = {
        sign_job(SPEC, NODE.key_id, COORDINATOR, timeout=dt.timedelta(1))[0].job_id
        for _ in range(20)
    }
    assert len(ids) == 20


def node(status: int, body: Any = None, *, raw: bytes | None = None, delay: float = 0) -> FastAPI:
    app = FastAPI()
    app.state.seen = []

    @app.post("/v1/jobs")
    async def jobs(request: Request) -> Response:
        app.state.seen.append(await request.json())
        await asyncio.sleep(delay)
        if raw is not None:
            return Response(raw, status_code=status, media_type="application/json")
        return JSONResponse(body, status_code=status)

    return app


def call(url: str, *, timeout: float = 5, max_result_bytes: int = 1 << 20) -> Any:
    async def main() -> Any:
        async with httpx.AsyncClient() as http:
            return await dispatch(
                http,
                candidate(url),
                SPEC,
                COORDINATOR,
                timeout=timeout,
                max_result_bytes=max_result_bytes,
            )

    return asyncio.run(main())


def test_the_node_receives_the_signed_job_and_the_inputs() -> None:
    app = node(200, {"not": "a result"})
    with serve(app) as url, pytest.raises(VerificationError):
        call(url)
    (body,) = app.state.seen
    job = Job.open(Envelope.from_json(body["job"]), COORDINATOR.public, node_id=NODE.key_id)
    assert job.request_id == SPEC.request_id
    assert body["inputs"] == SPEC.inputs_json


def test_an_unreachable_node_is_unavailable_and_retryable() -> None:
    with pytest.raises(NodeUnavailableError) as exc:
        call(f"http://127.0.0.1:{free_port()}")
    assert retryable(exc.value)


def test_a_node_that_does_not_answer_in_time_is_unavailable() -> None:
    with serve(node(200, {}, delay=1)) as url, pytest.raises(NodeUnavailableError, match="in time"):
        call(url, timeout=0.3)


def test_a_busy_or_failing_node_is_unavailable_with_its_status_not_its_words() -> None:
    app = node(503, {"title": "x", "detail": "queue is full"})
    with serve(app) as url, pytest.raises(NodeUnavailableError) as exc:
        call(url)
    assert exc.value.evidence["status"] == 503
    assert exc.value.evidence["detail"] == "node answered 503 Service Unavailable"
    assert retryable(exc.value)


@pytest.mark.parametrize("status", [403, 409, 410, 422])
def test_a_node_that_refuses_the_job_is_not_retried(status: int) -> None:
    problem = {"type": "https://veriml.dev/problems/x", "detail": "words", "check": "job-time"}
    with serve(node(status, problem)) as url, pytest.raises(JobRejectedError) as exc:
        call(url)
    assert exc.value.status == status
    assert exc.value.detail.startswith(f"node answered {status} ")
    assert exc.value.detail.endswith("(check job-time)")  # a veriml problem's check survives
    assert "words" not in exc.value.diagnostics()
    assert not retryable(exc.value)


def test_an_answer_that_is_not_a_result_document_is_evidence_against_the_node() -> None:
    with serve(node(200, raw=b"[1, 2")) as url, pytest.raises(VerificationError) as exc:
        call(url)
    assert exc.value.check == "result"
    assert retryable(exc.value)


def test_an_oversized_answer_is_refused_before_it_is_parsed() -> None:
    with serve(node(200, raw=b"x" * 5000)) as url, pytest.raises(VerificationError) as exc:
        call(url, max_result_bytes=4096)
    assert "larger than the limit" in str(exc.value)
