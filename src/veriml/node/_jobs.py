"""Job handling: admit a signed job, run it off the event loop, answer the result document.

For each ``POST /v1/jobs`` body ``{"job": <DSSE envelope>, "inputs": {name: tensor JSON}}``
(docs/network.md, "Job") or, for an LLM job, ``{"job", "request": canonical request}`` plus
``"completion"`` for a prefill check (docs/llm.md), in order:

1. the body parses (400);
2. ``Job.open``: signed by the configured coordinator key, addressed to this node, not issued
   in the future (403), not expired (410), and an LLM job's request is the signed one (422);
3. admission: the node is not shutting down, a traced job's ``retain_until`` is at most the
   node's ``max_retention`` past the job's expiry (422), and running + waiting jobs of the
   job's *lane* are below its concurrency plus queue length (503 with ``Retry-After``);
4. the replay cache admits the job id (409; see :mod:`veriml.node._memory`);
5. the model is loaded, or pulled and verified (:mod:`veriml.node._models`);
6. a worker thread (one per ``concurrency``) decodes the input tensors, checks their digests
   against the signed ones (422) and hands the job to the node's
   :class:`~veriml.node._byzantine.Behaviour`: the honest one runs the model under the
   verifiable profile and signs the receipt with the node key (``policy`` and ``request_id``
   from the job); a byzantine one (tests and demos only) cheats in its documented way.
   A traced job's trace is kept on disk for disputes until its ``retain_until``, replacing
   any earlier one of the same request (:mod:`veriml.node._evidence`).

Two lanes, each with its own worker threads and queue: ordinary jobs (``concurrency``,
``queue_length``) and *retraces* (``retrace_concurrency``, ``retrace_queue``): traced jobs
for a request this node already answered, which the coordinator sends to re-derive an
untraced answer in a dispute. A flood of ordinary jobs cannot fill the retrace lane, so a
busy node still makes its dispute moves in time; trace reveals do not go through either lane.

LLM jobs take the same steps with a GGUF model (:mod:`veriml.node._llm` runs them in step 6).
A completion job may stream (:meth:`JobService.stream`): steps 1-5 and the wait for a worker
slot happen before the first byte, so every refusal is still an HTTP status; then each
generated token is one NDJSON line, and the answer (or the error) the last one.

Steps 5 and 6 together must finish within ``job_timeout`` (504). A run that is already in a
worker when the timeout hits keeps its slot until it ends, so the concurrency limit holds; an
LLM generation is stopped at its next token instead (as when a streaming client goes away).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from veriml.core.dsse import Envelope
from veriml.core.errors import (
    ExecutionError,
    FormatError,
    InvalidInputError,
    InvalidTensorError,
    NodeUnavailableError,
)
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.node._byzantine import Behaviour
from veriml.node._evidence import AnsweredRequests, TraceStore
from veriml.node._llm import CompletionEngine, LLMJobs
from veriml.node._memory import ReplayCache
from veriml.node._models import ModelCache
from veriml.protocol.jobs import Job
from veriml.runtime import Runner

if TYPE_CHECKING:
    from veriml.runtime.llm import TokenEvent

__all__ = ["JobCancelledError", "JobService"]

log = logging.getLogger("veriml.node")

RETRY_AFTER_SECONDS = 1


class JobCancelledError(ExecutionError):
    """An LLM generation stopped at a token boundary: its job timed out or its client left."""


@dataclass(frozen=True, slots=True)
class JobBody:
    """A parsed ``POST /v1/jobs`` body (step 1); nothing in it is checked yet."""

    envelope: Envelope
    inputs: Mapping[str, Any]
    request: Mapping[str, Any] | None = None
    completion: Any = None


def parse_job_body(body: object) -> JobBody:
    """Step 1: the envelope, the (still encoded) input tensors, an LLM job's request and a
    prefill job's completion."""
    if not isinstance(body, Mapping) or set(body) - {"job", "inputs", "request", "completion"}:
        raise FormatError(
            'a job body is {"job": envelope, "inputs": {name: tensor}} or, for an LLM job, '
            '{"job", "request"[, "completion"]}'
        )
    inputs = body.get("inputs", {})
    if not isinstance(inputs, Mapping) or not all(isinstance(v, Mapping) for v in inputs.values()):
        raise FormatError("job inputs must be an object of name -> tensor JSON")
    raw = body.get("job")
    if not isinstance(raw, Mapping):
        raise FormatError("job body has no job envelope")
    request = body.get("request")
    if request is not None and not isinstance(request, Mapping):
        raise FormatError("an LLM job's request is an object", member="request")
    return JobBody(Envelope.from_json(raw), inputs, request, body.get("completion"))


async def _one_line(answer: bytes) -> AsyncIterator[bytes]:
    yield b'{"result":' + answer + b"}\n"


class _Lane:
    """Worker threads and a bounded queue for one kind of job."""

    def __init__(self, name: str, concurrency: int, queue_length: int) -> None:
        self.name = name
        self.concurrency = concurrency
        self.queue_length = queue_length
        self.active = 0
        self.waiting = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix=f"veriml-{name}"
        )
        self.slots = asyncio.Semaphore(concurrency)

    @property
    def full(self) -> bool:
        return self.active + self.waiting >= self.concurrency + self.queue_length


def _kind_members(job: Job, body: JobBody) -> None:
    """What travels beside the envelope must be what the job's kind takes."""
    if job.kind != "onnx" and body.inputs:
        raise FormatError(f"a {job.kind} job carries no input tensors", member="inputs")
    if (job.kind == "prefill") != (body.completion is not None):
        raise FormatError(
            "a prefill job, and only a prefill job, carries the completion to check",
            member="completion",
        )


class JobService:
    """Runs jobs for one node key in two lanes (module docstring), each with bounded
    concurrency and a bounded waiting queue."""

    def __init__(
        self,
        *,
        key: SigningKey,
        models: ModelCache,
        replay: ReplayCache,
        traces: TraceStore,
        concurrency: int,
        queue_length: int,
        job_timeout: float,
        max_tensor_bytes: int,
        behaviour: Behaviour | None = None,
        llm: LLMJobs | None = None,
        relay: CompletionEngine | None = None,
        answered: AnsweredRequests | None = None,
        retrace_concurrency: int = 1,
        retrace_queue: int = 16,
    ) -> None:
        self.key = key
        self.behaviour = behaviour if behaviour is not None else Behaviour(key)
        """Turns a checked job into its result; honest unless the node was started byzantine."""
        self.llm = llm if llm is not None else LLMJobs(key)
        """Runs LLM jobs (completion, embedding, prefill)."""
        self.relay = relay
        """When set, every completion job runs on this engine instead of a local model."""
        self.node_id = key.key_id
        self.models = models
        self.replay = replay
        self.traces = traces
        self.answered = answered
        """Requests this node answered: a traced job for one of them is a retrace."""
        self.concurrency = concurrency
        self.queue_length = queue_length
        self.job_timeout = job_timeout
        self.max_tensor_bytes = max_tensor_bytes
        self.coordinator_key: VerifyingKey | None = None
        """Set once known (configured, or fetched on first use); jobs are refused until then."""
        self.accepting = True
        self.completed = 0
        self.jobs = _Lane("job", concurrency, queue_length)
        self.retraces = _Lane("retrace", retrace_concurrency, retrace_queue)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active(self) -> int:
        """Jobs running in a worker thread (both lanes)."""
        return self.jobs.active + self.retraces.active

    @property
    def waiting(self) -> int:
        """Admitted jobs not yet in a worker (pulling their model or queued for a slot)."""
        return self.jobs.waiting + self.retraces.waiting

    @property
    def capacity(self) -> int:
        return self.concurrency

    def load(self) -> dict[str, int]:
        """The ordinary lane's load (what the coordinator schedules by)."""
        return {
            "active": self.jobs.active,
            "queued": self.jobs.waiting,
            "capacity": self.concurrency,
        }

    def lane_of(self, job: Job) -> _Lane:
        """The retrace lane for a traced job of a request this node answered, else the
        ordinary one."""
        if job.trace and (
            (self.answered is not None and job.request_id in self.answered)
            or self.traces.has(job.request_id)
        ):
            return self.retraces
        return self.jobs

    def _admit(self, body: object) -> tuple[Job, JobBody, _Lane]:
        """Steps 1-4; on success the job counts as waiting in its lane until
        :meth:`_submit` starts it or :meth:`_unwait`."""
        parsed = parse_job_body(body)  # 1
        if self.coordinator_key is None:
            raise NodeUnavailableError(
                "node does not know its coordinator's key yet", retry_after=RETRY_AFTER_SECONDS
            )
        job = Job.open(  # 2
            parsed.envelope, self.coordinator_key, node_id=self.node_id, request=parsed.request
        )
        _kind_members(job, parsed)
        if not self.accepting:  # 3
            raise NodeUnavailableError("node is shutting down", retry_after=RETRY_AFTER_SECONDS)
        self.traces.check_retention(job.retain_until, expires_at=job.expires_at)
        lane = self.lane_of(job)
        if lane.full:
            raise NodeUnavailableError(
                f"node is busy: its {lane.name} queue is full",
                active=lane.active,
                queued=lane.waiting,
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.replay.admit(job, now=dt.datetime.now(dt.UTC))  # 4
        lane.waiting += 1
        self._idle.clear()
        return job, parsed, lane

    def _unwait(self, lane: _Lane) -> None:
        lane.waiting -= 1
        self._check_idle()

    def _timed_out(self, job: Job) -> NodeUnavailableError:
        return NodeUnavailableError(
            "job did not finish within the node's job timeout",
            job_id=job.job_id,
            timeout_seconds=self.job_timeout,
        )

    async def run(self, body: object) -> bytes:
        """Steps 1-6 for one job body; the result document as JSON bytes (serialised in the
        worker thread, off the event loop), or a veriml error."""
        job, parsed, lane = self._admit(body)
        return await self._run_admitted(job, parsed, lane)

    async def stream(self, body: object) -> AsyncIterator[bytes]:
        """A completion job as NDJSON lines: ``{"token", "text"}`` per generated token, then
        ``{"result": answer}``. Other job kinds answer their one document as one line
        ``{"result": ...}``.

        Steps 1-5 and the wait for a worker slot happen here, before the iterator is
        returned, so their errors raise as usual. Errors after that are raised by the
        iterator (the caller turns them into an ``{"error": problem}`` line). Closing the
        iterator early (the client left) stops the generation at its next token.
        """
        job, parsed, lane = self._admit(body)
        if job.kind != "completion":
            return _one_line(await self._run_admitted(job, parsed, lane))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.job_timeout
        cancel = threading.Event()
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()

        def on_token(event: TokenEvent) -> None:
            if cancel.is_set():
                raise JobCancelledError("generation stopped", job_id=job.job_id)
            line = json.dumps({"token": event.token, "text": event.text}).encode() + b"\n"
            loop.call_soon_threadsafe(lines.put_nowait, line)

        started = [False]
        try:
            future = await asyncio.wait_for(
                self._submit(job, parsed, lane, started, on_token), timeout=self.job_timeout
            )
        except TimeoutError as exc:
            raise self._timed_out(job) from exc
        finally:
            if not started[0]:
                self._unwait(lane)
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(lines.put_nowait, None))
        return self._lines(job, future, lines, cancel, deadline)

    async def _lines(
        self,
        job: Job,
        future: concurrent.futures.Future[bytes],
        lines: asyncio.Queue[bytes | None],
        cancel: threading.Event,
        deadline: float,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    line = await asyncio.wait_for(lines.get(), timeout=deadline - loop.time())
                except TimeoutError as exc:
                    raise self._timed_out(job) from exc
                if line is None:
                    break
                yield line
            answer = await asyncio.wrap_future(future)
            yield b'{"result":' + answer + b"}\n"
        finally:
            cancel.set()

    async def _run_admitted(self, job: Job, parsed: JobBody, lane: _Lane) -> bytes:
        started = [False]
        cancel = threading.Event()
        try:
            return await asyncio.wait_for(
                self._execute(job, parsed, lane, started, cancel), timeout=self.job_timeout
            )
        except TimeoutError as exc:
            raise self._timed_out(job) from exc
        finally:
            cancel.set()
            if not started[0]:
                self._unwait(lane)

    async def _execute(
        self, job: Job, parsed: JobBody, lane: _Lane, started: list[bool], cancel: threading.Event
    ) -> bytes:
        def on_token(_: TokenEvent) -> None:
            if cancel.is_set():
                raise JobCancelledError("generation stopped", job_id=job.job_id)

        # A relay streams from its upstream only when asked to: no token hook for it here.
        hook = on_token if self.relay is None else None
        return await asyncio.wrap_future(await self._submit(job, parsed, lane, started, hook))

    async def _submit(
        self,
        job: Job,
        parsed: JobBody,
        lane: _Lane,
        started: list[bool],
        on_token: Callable[[TokenEvent], None] | None,
    ) -> concurrent.futures.Future[bytes]:
        """Step 5 and a worker slot; the worker's future (step 6)."""
        work: Callable[[], bytes]
        if job.kind == "onnx":
            runner = await self.models.runner(job.model)  # 5
            work = functools.partial(self._work, runner, job, parsed.inputs)
        elif job.kind == "prefill":
            if self.relay is not None:
                raise InvalidInputError("a relay node runs no model, so it checks no completion")
            local = await self.models.engine(job.model)
            work = functools.partial(self.llm.check, local, job, parsed.completion)
        else:
            engine = self.relay if self.relay is not None else await self.models.engine(job.model)
            work = functools.partial(self.llm.complete, engine, job, on_token=on_token)
        await lane.slots.acquire()
        started[0] = True
        lane.waiting -= 1
        lane.active += 1
        loop = asyncio.get_running_loop()
        future = lane.pool.submit(work)  # 6
        # The slot is freed when the thread ends, not when a timeout stops the wait for it.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release, lane))
        return future

    def _release(self, lane: _Lane) -> None:
        lane.active -= 1
        self.completed += 1
        lane.slots.release()
        self._check_idle()

    def _check_idle(self) -> None:
        if self.active == 0 and self.waiting == 0:
            self._idle.set()

    def _work(self, runner: Runner, job: Job, encoded: Mapping[str, Any]) -> bytes:
        try:
            inputs = {
                str(name): tensor_from_json(obj, max_bytes=self.max_tensor_bytes)
                for name, obj in encoded.items()
            }
        except FormatError as exc:
            raise InvalidTensorError(exc.message, **exc.evidence) from exc
        job.check_inputs({name: tensor_digest(array) for name, array in inputs.items()})
        result = self.behaviour.run(runner, job, inputs)
        if result.trace is not None:
            self.traces.put(
                request_id=job.request_id,
                job_id=job.job_id,
                model=job.model.to_text(),
                trace=result.trace,
                retain_until=job.retain_until,
            )
        answer = self.behaviour.answer(result)
        if self.answered is not None:
            self.answered.record(job.request_id)
        return answer

    async def drain(self, grace: float) -> bool:
        """Stop admitting jobs and wait up to ``grace`` seconds for admitted ones to end.

        True when every admitted job ended in time.
        """
        self.accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace)
        except TimeoutError:
            log.warning(
                "shutdown grace period over with %d running and %d waiting jobs",
                self.active,
                self.waiting,
            )
            return False
        return True

    def close(self) -> None:
        for lane in (self.jobs, self.retraces):
            lane.pool.shutdown(wait=False, cancel_futures=True)
        if self.answered is not None:
            self.answered.close()
