"""Coordinator -> node: sign a job, post it with its inputs, read back the result document.

The wire format is docs/network.md, "Job" and "Result document": the body of
``POST {endpoint}/v1/jobs`` is ``{"job": <DSSE envelope>, "inputs": {name: tensor JSON}}``,
the job's payload carries the input *digests*, and the answer is a ``veriml run`` result
document (``{"outputs", "receipt"}``), parsed here but verified by the caller.

Failures are sorted by what the caller can do about them::

    NodeUnavailable      connection refused or reset, timeout, 5xx (a queue-full 503 too):
                         the node is at fault or busy; try another node
    VerificationError    the node answered 2xx with something that is not a result document:
                         the node is at fault; try another node
    JobRejected          4xx: the node refused this job (bad signature, wrong addressee,
                         replay, expired, inputs that do not match); another node would refuse
                         the same job for the same reason, so the request fails

:class:`PerHostTransport` is the transport of the coordinator's client to nodes: httpcore's
pool checks every connection it holds (a ``poll`` system call each) whenever it assigns a
request or takes a response back, so one pool shared by all nodes costs CPU in proportion to
the connections to *every* node on each job; one pool per node keeps it to that node's.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from veriml.coordinator.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Error, ExecutionError, NodeUnavailable, VerificationError
from veriml.core.keys import SigningKey
from veriml.protocol.messages import Job, format_time
from veriml.protocol.policy import Policy
from veriml.runtime import RunResult

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "JobRejected",
    "JobSpec",
    "PerHostTransport",
    "dispatch",
    "retain_until",
    "sign_job",
]

DEFAULT_MAX_RESULT_BYTES = 256 * 1024 * 1024
_DETAIL_CHARS = 300


class JobRejected(ExecutionError):
    """A node refused a job with a 4xx answer; ``status`` and ``detail`` are the node's."""

    def __init__(self, message: str, *, node: str, status: int, detail: str) -> None:
        super().__init__(message, node=node, status=status, detail=detail)
        self.node = node
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSpec:
    """What every job of one request shares; each node gets its own signed job for it."""

    request_id: str
    model: Digest
    input_digests: Mapping[str, Digest]
    inputs_json: Mapping[str, Any]
    policy: str
    trace: bool = False
    spot: Digest | None = None
    """``spot:P``: the commitment to the coordinator's secret, signed into every job of the
    request (the checker's too, so no node can tell a check from a first run)."""
    retain_until: str | None = None
    """Traced jobs: until when the node keeps the trace (RFC 3339). None: for an
    ``optimistic:W`` job, W after the job expires (:func:`retain_until`)."""
    challenge_window: float | None = None
    """Traced jobs of other policies: the rules' challenge window, in seconds, that
    :func:`retain_until` adds when ``retain_until`` is not given."""


def retain_until(
    policy: str, *, expires: dt.datetime, challenge_window: float | None = None
) -> str | None:
    """Until when a node must keep the trace of a job that expires at ``expires``: as long
    as its answer can be challenged (the verdict's ``final_after``, which is set after the
    answer arrived, so before ``expires`` plus the window). ``optimistic:W`` answers are
    challenged for W, other policies for the rules' ``challenge_window``; None when neither
    applies (the node then keeps the trace for its own default)."""
    parsed = Policy.parse(policy)
    window = parsed.window if parsed.kind == "optimistic" else challenge_window
    if window is None:
        return None
    return format_time(expires + dt.timedelta(seconds=window))


def sign_job(
    spec: JobSpec,
    node_id: str,
    key: SigningKey,
    *,
    timeout: dt.timedelta,
    now: dt.datetime | None = None,
) -> tuple[Job, Envelope]:
    """A fresh job (new ``job_id``) for ``node_id``, valid from ``now`` for ``timeout``."""
    issued = now or dt.datetime.now(dt.UTC)
    keep = spec.retain_until
    if spec.trace and keep is None:
        keep = retain_until(
            spec.policy, expires=issued + timeout, challenge_window=spec.challenge_window
        )
    job = Job(
        job_id=str(uuid.uuid4()),
        node_id=node_id,
        request_id=spec.request_id,
        model=spec.model,
        inputs=dict(spec.input_digests),
        policy=spec.policy,
        issued_at=format_time(issued),
        expires_at=format_time(issued + timeout),
        trace=spec.trace,
        spot=spec.spot,
        retain_until=keep if spec.trace else None,
    )
    return job, job.sign(key)


class PerHostTransport(httpx.AsyncBaseTransport):
    """An :class:`httpx.AsyncBaseTransport` with one keep-alive pool per origin.

    ``limits`` apply to each origin's pool; at most ``max_hosts`` pools are kept (the oldest
    is closed when a new origin needs one)."""

    def __init__(self, *, limits: httpx.Limits, max_hosts: int = 1024) -> None:
        self._limits = limits
        self._max_hosts = max_hosts
        self._pools: dict[tuple[bytes, bytes, int | None], httpx.AsyncHTTPTransport] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port)
        pool = self._pools.get(origin)
        if pool is None:
            if len(self._pools) >= self._max_hosts:
                oldest = next(iter(self._pools))
                await self._pools.pop(oldest).aclose()
            pool = self._pools[origin] = httpx.AsyncHTTPTransport(limits=self._limits)
        return await pool.handle_async_request(request)

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def _problem_detail(body: bytes) -> str:
    try:
        problem = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:_DETAIL_CHARS].decode("utf-8", "replace")
    if isinstance(problem, dict):
        for member in ("detail", "title"):
            if isinstance(problem.get(member), str):
                return str(problem[member])[:_DETAIL_CHARS]
    return str(problem)[:_DETAIL_CHARS]


async def _read_bounded(response: httpx.Response, limit: int, node: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise VerificationError(
            "node answer is larger than the limit", check="result", node=node, limit=limit
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise VerificationError(
                "node answer is larger than the limit", check="result", node=node, limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


async def dispatch(
    http: httpx.AsyncClient,
    node: Candidate,
    spec: JobSpec,
    key: SigningKey,
    *,
    timeout: float,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> RunResult:
    """Sign a job for ``node``, post it, and parse its result document (not yet verified).

    ``timeout`` bounds the whole exchange and is the job's validity window, so a node never
    starts a job the coordinator has already given up on.
    """
    _, envelope = sign_job(spec, node.node_id, key, timeout=dt.timedelta(seconds=timeout))
    body = {"job": envelope.to_json(), "inputs": dict(spec.inputs_json)}
    url = node.endpoint.rstrip("/") + "/v1/jobs"
    try:
        async with http.stream("POST", url, json=body, timeout=httpx.Timeout(timeout)) as response:
            data = await _read_bounded(response, max_result_bytes, node.node_id)
    except httpx.TimeoutException as exc:
        raise NodeUnavailable(
            "node did not answer in time", node=node.node_id, endpoint=node.endpoint
        ) from exc
    except httpx.HTTPError as exc:
        raise NodeUnavailable(
            "node could not be reached",
            node=node.node_id,
            endpoint=node.endpoint,
            reason=type(exc).__name__,
        ) from exc
    status = response.status_code
    if status >= 500:
        raise NodeUnavailable(
            "node failed the job",
            node=node.node_id,
            status=status,
            detail=_problem_detail(data),
        )
    if status >= 400:
        raise JobRejected(
            "node refused the job", node=node.node_id, status=status, detail=_problem_detail(data)
        )
    if status != 200:
        raise VerificationError(
            "node answered with an unexpected status",
            check="result",
            node=node.node_id,
            status=status,
        )
    try:
        return RunResult.from_bytes(data)
    except Error as exc:
        raise VerificationError(
            "node answered with something that is not a result document",
            check="result",
            node=node.node_id,
            reason=exc.diagnostics()[:_DETAIL_CHARS],
        ) from exc
