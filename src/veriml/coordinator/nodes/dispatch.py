"""Coordinator -> node: sign a job, post it with its inputs, read back the result document.

The wire format is docs/network.md, "Job" and "Result document": the body of
``POST {endpoint}/v1/jobs`` is ``{"job": <DSSE envelope>, "inputs": {name: tensor JSON}}``,
the job's payload carries the input *digests*, and the answer is a ``veriml run`` result
document (``{"outputs", "receipt"}``), parsed here but verified by the caller.

Failures are sorted by what the caller can do about them::

    NodeUnavailableError      connection refused or reset, timeout, 5xx (a queue-full 503 too):
                         the node is at fault or busy; try another node
    VerificationError    the node answered 2xx with something that is not a result document:
                         the node is at fault; try another node
    JobRejectedError          4xx: the node refused this job (bad signature, wrong addressee,
                         replay, expired, inputs that do not match); another node would refuse
                         the same job for the same reason, so the request fails

What a client learns of a node's error answer is :func:`node_problem`'s summary, never the
body itself: the status, and from a body that parses as a veriml problem, its ``check``,
``param`` and ``code`` when each is a short name. A registered endpoint can point at any
service the coordinator reaches, so echoing what answered there would make the coordinator a
probe of its own network (docs/threat-model.md, "Abuse of the edges").
:class:`PerHostTransport` enforces it for every call the coordinator makes to a node
(dispatch, completions, dispute queries): an answer of 400 or more reaches its caller as that
summary, and only its ``Retry-After`` header survives.

:class:`PerHostTransport` is the transport of the coordinator's client to nodes: httpcore's
pool checks every connection it holds (a ``poll`` system call each) whenever it assigns a
request or takes a response back, so one pool shared by all nodes costs CPU in proportion to
the connections to *every* node on each job; one pool per node keeps it to that node's.
"""

from __future__ import annotations

import datetime as dt
import http
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import httpx

from veriml.coordinator.nodes.scheduler import Candidate
from veriml.coordinator.problems import PROBLEM_TYPE
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Check, Error, ExecutionError, NodeUnavailableError, VerificationError
from veriml.core.keys import SigningKey
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.protocol.policy import Policy
from veriml.runtime import RunResult

__all__ = [
    "DEFAULT_MAX_RESULT_BYTES",
    "JobRejectedError",
    "JobSpec",
    "PerHostTransport",
    "dispatch",
    "node_problem",
    "retain_until",
    "sign_job",
    "unreachable",
]

DEFAULT_MAX_RESULT_BYTES = 256 * 1024 * 1024
MAX_PROBLEM_BYTES = 16 * 1024
"""The most of a node's error answer read; a longer one is summarised by its status alone."""
_NAME = re.compile(r"[a-z0-9][a-z0-9._:-]{0,63}")  # a check or an OpenAI error code
_PARAM = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}")  # a request member
_RETRY_AFTER = re.compile(r"[0-9]{1,6}")


class JobRejectedError(ExecutionError):
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
        response = await pool.handle_async_request(request)
        if response.status_code >= 400:
            return await _summarised(response)
        return response

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()


def node_problem(status: int, body: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The RFC 9457 problem a client may see for a node's error answer of ``status``: the
    status and its reason phrase, and from ``body`` (the answer's bytes, or a problem object
    a node streamed) only ``check``, ``param`` and ``code``, each kept when ``body`` is a
    veriml problem object and the member is a short name. Nothing else of ``body`` survives,
    so a summary of a summary is the summary.

    >>> node_problem(400, b'{"type": "https://veriml.dev/problems/bad-request", '
    ...              b'"detail": "secret", "param": "messages"}')["detail"]
    'node answered 400 Bad Request (param messages)'
    """
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    parsed: Any = body
    if isinstance(body, bytes | bytearray):
        try:
            parsed = json.loads(body) if len(body) <= MAX_PROBLEM_BYTES else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            parsed = None
    kept: dict[str, str] = {}
    if isinstance(parsed, Mapping) and str(parsed.get("type", "")).startswith(PROBLEM_TYPE):
        for member, pattern in (("check", _NAME), ("param", _PARAM), ("code", _NAME)):
            value = parsed.get(member)
            if isinstance(value, str) and pattern.fullmatch(value):
                kept[member] = value
    said = ", ".join(f"{member} {value}" for member, value in kept.items())
    return {
        "type": PROBLEM_TYPE + "node-error",
        "title": phrase,
        "status": status,
        "detail": f"node answered {status} {phrase}" + (f" ({said})" if said else ""),
        **kept,
    }


def _problem_detail(status: int, body: bytes) -> str:
    return str(node_problem(status, body)["detail"])


async def _summarised(response: httpx.Response) -> httpx.Response:
    """``response`` (an error answer, not yet read) with its body replaced by
    :func:`node_problem`'s summary; at most :data:`MAX_PROBLEM_BYTES` of it are read."""
    raw = bytearray()
    try:
        async for chunk in cast(httpx.AsyncByteStream, response.stream):
            raw += chunk
            if len(raw) > MAX_PROBLEM_BYTES:
                break
    except httpx.HTTPError:
        raw.clear()  # cut short: the status is all there is to say
    finally:
        await response.aclose()
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    body = bytes(raw) if encoding in ("", "identity") else b""
    content = json.dumps(node_problem(response.status_code, body)).encode()
    headers = [("content-type", "application/problem+json")]
    retry = response.headers.get("retry-after", "").strip()
    if _RETRY_AFTER.fullmatch(retry):
        headers.append(("retry-after", retry))
    extensions = {k: v for k, v in response.extensions.items() if k != "network_stream"}
    return httpx.Response(
        response.status_code, headers=headers, content=content, extensions=extensions
    )


async def _read_bounded(response: httpx.Response, limit: int, node: str) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise VerificationError(
            "node answer is larger than the limit", check=Check.RESULT, node=node, limit=limit
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise VerificationError(
                "node answer is larger than the limit", check=Check.RESULT, node=node, limit=limit
            )
        chunks.append(chunk)
    return b"".join(chunks)


def unreachable(node: Candidate, exc: httpx.HTTPError) -> NodeUnavailableError:
    """The error for a job post to ``node`` that got no answer: in time, or at all (which
    transport error, never its text)."""
    if isinstance(exc, httpx.TimeoutException):
        return NodeUnavailableError(
            "node did not answer in time", node=node.node_id, endpoint=node.endpoint
        )
    return NodeUnavailableError(
        "node could not be reached",
        node=node.node_id,
        endpoint=node.endpoint,
        reason=type(exc).__name__,
    )


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
    except httpx.HTTPError as exc:
        raise unreachable(node, exc) from exc
    status = response.status_code
    if status >= 500:
        raise NodeUnavailableError(
            "node failed the job",
            node=node.node_id,
            status=status,
            detail=_problem_detail(status, data),
        )
    if status >= 400:
        raise JobRejectedError(
            "node refused the job",
            node=node.node_id,
            status=status,
            detail=_problem_detail(status, data),
        )
    if status != 200:
        raise VerificationError(
            "node answered with an unexpected status",
            check=Check.RESULT,
            node=node.node_id,
            status=status,
        )
    try:
        return RunResult.from_bytes(data)
    except Error as exc:
        # Which error, not its text: the text may quote what answered (module docstring).
        raise VerificationError(
            "node answered with something that is not a result document",
            check=Check.RESULT,
            node=node.node_id,
            reason=type(exc).__name__,
        ) from exc
