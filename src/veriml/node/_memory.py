"""What a node remembers between jobs: seen job ids (replay protection) and kept traces.

Both are in memory and pruned by time; neither does I/O.

Replay protection (docs/node.md, "Replay protection"): a job id is kept until the job expires,
after which ``Job.open`` refuses the job as expired anyway. Since the cache does not survive a
restart, a job issued before this process started is refused too: any job an earlier run of
the node could have executed was issued before now. Together with the cap on a job's validity
window this needs no disk and no fsync on the hot path, and still refuses every replay.
"""

from __future__ import annotations

import datetime as dt
import heapq
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veriml.core.errors import Conflict, FormatError, NotFound, VerificationError
from veriml.core.tensors import tensor_to_json
from veriml.protocol.messages import Job, format_time, parse_time
from veriml.runtime import Trace

__all__ = ["KeptTrace", "ReplayCache", "TraceStore"]


class ReplayCache:
    """Job ids seen by this process, each kept until its job expires.

    ``admit`` is atomic (a lock), so two copies of one job arriving together admit one.
    """

    def __init__(self, *, started_at: dt.datetime, max_validity: dt.timedelta) -> None:
        self.started_at = started_at
        self.max_validity = max_validity
        self._seen: dict[str, dt.datetime] = {}
        self._expiry: list[tuple[dt.datetime, str]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, job: Job, *, now: dt.datetime | None = None) -> None:
        """Record ``job``'s id, or raise: :class:`Conflict` for a replay (or a job that may have
        run before this process started), :class:`VerificationError` for a validity window
        longer than the node accepts."""
        current = now or dt.datetime.now(dt.UTC)
        issued = parse_time(job.issued_at, what="issued_at")
        expires = parse_time(job.expires_at, what="expires_at")
        if expires - issued > self.max_validity:
            raise VerificationError(
                "job validity window is longer than this node accepts",
                check="job-validity",
                issued_at=job.issued_at,
                expires_at=job.expires_at,
                limit_seconds=self.max_validity.total_seconds(),
            )
        if issued < self.started_at:
            raise Conflict(
                "job was issued before this node started, so it may have run already",
                job_id=job.job_id,
                issued_at=job.issued_at,
                node_started=format_time(self.started_at),
            )
        with self._lock:
            self._prune(current)
            if job.job_id in self._seen:
                raise Conflict("job was already received (replay)", job_id=job.job_id)
            self._seen[job.job_id] = expires
            heapq.heappush(self._expiry, (expires, job.job_id))

    def _prune(self, now: dt.datetime) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            self._seen.pop(job_id, None)


@dataclass(frozen=True, slots=True)
class KeptTrace:
    """A trace kept for disputes: the digest list plus every recorded tensor."""

    request_id: str
    job_id: str
    model: str
    trace: Trace
    expires: float
    """``time.monotonic()`` deadline."""
    expires_at: str
    """The same deadline as an RFC 3339 time, for the reader."""
    size: int
    """Bytes of tensor data held."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "job_id": self.job_id,
            "model": self.model,
            "expires_at": self.expires_at,
            "trace": self.trace.to_json(),
        }
        tensors = self.trace.tensors or {}
        out["tensors"] = {name: tensor_to_json(a, force_b64=True) for name, a in tensors.items()}
        return out

    def reveal(self, index: int) -> dict[str, Any]:
        """Entry ``index`` with its RFC 9162 inclusion proof against the trace root
        (docs/verification.md, "Service"): ``{"root", "size", "index", "entry", "proof"}``,
        the proof as hex strings. :class:`FormatError` for an index out of range."""
        size = self.trace.size
        if not 0 <= index < size:
            raise FormatError("trace index is out of range", index=index, size=size)
        return {
            "root": self.trace.root.to_text(),
            "size": size,
            "index": index,
            "entry": self.trace.entries[index].to_json(),
            "proof": [node.hex() for node in self.trace.inclusion_proof(index)],
        }

    def tensor(self, name: str) -> dict[str, Any]:
        """The kept tensor ``name`` (a graph input or a node output) as tensor JSON (base64);
        :class:`NotFound` when the trace keeps no tensor of that name."""
        value = (self.trace.tensors or {}).get(name)
        if value is None:
            raise NotFound(
                "the trace keeps no tensor of this name",
                request_id=self.request_id[:256],
                name=name[:256],
            )
        return tensor_to_json(value, force_b64=True)


class TraceStore:
    """Traces by request id, kept for ``retention`` seconds and at most ``max_bytes`` of
    tensors (the oldest go first when a new one does not fit). A later trace of the same
    request id (the coordinator's re-traced job for a dispute) replaces the earlier one."""

    def __init__(
        self,
        *,
        retention: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retention = retention
        self.max_bytes = max_bytes
        self._clock = clock
        self._traces: OrderedDict[str, KeptTrace] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._traces)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, *, request_id: str, job_id: str, model: str, trace: Trace) -> KeptTrace | None:
        """Keep ``trace``; None when retention is zero or it alone exceeds the budget."""
        size = sum(int(a.nbytes) for a in (trace.tensors or {}).values())
        if self.retention <= 0 or size > self.max_bytes:
            return None
        now = self._clock()
        wall = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retention)
        kept = KeptTrace(
            request_id, job_id, model, trace, now + self.retention, format_time(wall), size
        )
        with self._lock:
            self._prune(now)
            old = self._traces.pop(request_id, None)
            if old is not None:
                self._bytes -= old.size
            while self._traces and self._bytes + size > self.max_bytes:
                _, evicted = self._traces.popitem(last=False)
                self._bytes -= evicted.size
            self._traces[request_id] = kept
            self._bytes += size
        return kept

    def get(self, request_id: str) -> KeptTrace:
        """The kept trace of ``request_id``; :class:`NotFound` if none or expired."""
        with self._lock:
            self._prune(self._clock())
            kept = self._traces.get(request_id)
        if kept is None:
            raise NotFound("no trace is kept for this request", request_id=request_id[:256])
        return kept

    def prune(self) -> None:
        with self._lock:
            self._prune(self._clock())

    def _prune(self, now: float) -> None:
        # Insertion order is expiry order: every trace gets the same retention.
        while self._traces:
            key, oldest = next(iter(self._traces.items()))
            if oldest.expires > now:
                break
            del self._traces[key]
            self._bytes -= oldest.size
