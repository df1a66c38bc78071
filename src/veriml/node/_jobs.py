"""Job handling: admit a signed job, run it off the event loop, answer the result document.

For each ``POST /v1/jobs`` body ``{"job": <DSSE envelope>, "inputs": {name: tensor JSON}}``
(docs/network.md, "Job"), in order:

1. the body parses (400);
2. ``Job.open``: signed by the configured coordinator key, addressed to this node, not issued
   in the future (403), not expired (410);
3. admission: the node is not shutting down and running + waiting jobs are below
   ``concurrency + queue_length`` (503 with ``Retry-After``);
4. the replay cache admits the job id (409; see :mod:`veriml.node._memory`);
5. the model is loaded, or pulled and verified (:mod:`veriml.node._models`);
6. a worker thread (one per ``concurrency``) decodes the input tensors, checks their digests
   against the signed ones (422) and hands the job to the node's
   :class:`~veriml.node._byzantine.Behaviour`: the honest one runs the model under the
   verifiable profile and signs the receipt with the node key (``policy`` and ``request_id``
   from the job); a byzantine one (tests and demos only) cheats in its documented way.
   A traced job's trace is kept for disputes, replacing any earlier one of the same request.

Steps 5 and 6 together must finish within ``job_timeout`` (504). A run that is already in a
worker when the timeout hits keeps its slot until it ends, so the concurrency limit holds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError, InvalidTensor, NodeUnavailable
from veriml.core.keys import SigningKey, VerifyingKey
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.node._byzantine import Behaviour
from veriml.node._memory import ReplayCache, TraceStore
from veriml.node._models import ModelCache
from veriml.protocol.messages import Job
from veriml.runtime import Runner

__all__ = ["JobService"]

log = logging.getLogger("veriml.node")

RETRY_AFTER_SECONDS = 1


def parse_job_body(body: object) -> tuple[Envelope, Mapping[str, Any]]:
    """Step 1: the envelope and the (still encoded) input tensors."""
    if not isinstance(body, Mapping) or set(body) - {"job", "inputs"}:
        raise FormatError('a job body is {"job": envelope, "inputs": {name: tensor}}')
    inputs = body.get("inputs", {})
    if not isinstance(inputs, Mapping) or not all(isinstance(v, Mapping) for v in inputs.values()):
        raise FormatError("job inputs must be an object of name -> tensor JSON")
    raw = body.get("job")
    if not isinstance(raw, Mapping):
        raise FormatError("job body has no job envelope")
    return Envelope.from_json(raw), inputs


class JobService:
    """Runs jobs for one node key with bounded concurrency and a bounded waiting queue."""

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
    ) -> None:
        self.key = key
        self.behaviour = behaviour if behaviour is not None else Behaviour(key)
        """Turns a checked job into its result; honest unless the node was started byzantine."""
        self.node_id = key.key_id
        self.models = models
        self.replay = replay
        self.traces = traces
        self.concurrency = concurrency
        self.queue_length = queue_length
        self.job_timeout = job_timeout
        self.max_tensor_bytes = max_tensor_bytes
        self.coordinator_key: VerifyingKey | None = None
        """Set once known (configured, or fetched on first use); jobs are refused until then."""
        self.accepting = True
        self.active = 0
        """Jobs running in a worker thread."""
        self.waiting = 0
        """Admitted jobs not yet in a worker (pulling their model or queued for a slot)."""
        self.completed = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="veriml-job"
        )
        self._slots = asyncio.Semaphore(concurrency)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def capacity(self) -> int:
        return self.concurrency

    def load(self) -> dict[str, int]:
        return {"active": self.active, "queued": self.waiting, "capacity": self.concurrency}

    async def run(self, body: object) -> bytes:
        """Steps 1-6 for one job body; the result document as JSON bytes (serialised in the
        worker thread, off the event loop), or a veriml error."""
        envelope, inputs = parse_job_body(body)  # 1
        if self.coordinator_key is None:
            raise NodeUnavailable(
                "node does not know its coordinator's key yet", retry_after=RETRY_AFTER_SECONDS
            )
        job = Job.open(envelope, self.coordinator_key, node_id=self.node_id)  # 2
        if not self.accepting:  # 3
            raise NodeUnavailable("node is shutting down", retry_after=RETRY_AFTER_SECONDS)
        if self.active + self.waiting >= self.concurrency + self.queue_length:
            raise NodeUnavailable(
                "node is busy: its job queue is full",
                active=self.active,
                queued=self.waiting,
                retry_after=RETRY_AFTER_SECONDS,
            )
        self.replay.admit(job, now=dt.datetime.now(dt.UTC))  # 4
        self.waiting += 1
        self._idle.clear()
        started = [False]
        try:
            return await asyncio.wait_for(
                self._execute(job, inputs, started), timeout=self.job_timeout
            )
        except TimeoutError as exc:
            raise NodeUnavailable(
                "job did not finish within the node's job timeout",
                job_id=job.job_id,
                timeout_seconds=self.job_timeout,
            ) from exc
        finally:
            if not started[0]:
                self.waiting -= 1
                self._check_idle()

    async def _execute(self, job: Job, inputs: Mapping[str, Any], started: list[bool]) -> bytes:
        runner = await self.models.runner(job.model)  # 5
        await self._slots.acquire()
        started[0] = True
        self.waiting -= 1
        self.active += 1
        loop = asyncio.get_running_loop()
        future = self._pool.submit(self._work, runner, job, inputs)  # 6
        # The slot is freed when the thread ends, not when a timeout stops the wait for it.
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(self._release))
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.active -= 1
        self.completed += 1
        self._slots.release()
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
            raise InvalidTensor(exc.message, **exc.evidence) from exc
        job.check_inputs({name: tensor_digest(array) for name, array in inputs.items()})
        result = self.behaviour.run(runner, job, inputs)
        if result.trace is not None:
            self.traces.put(
                request_id=job.request_id,
                job_id=job.job_id,
                model=job.model.to_text(),
                trace=result.trace,
            )
        return self.behaviour.answer(result)

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
        self._pool.shutdown(wait=False, cancel_futures=True)
