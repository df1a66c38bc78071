"""What a node remembers between jobs in memory: the job ids it admitted (replay protection).

Kept traces, which must outlive a restart, are on disk (:mod:`veriml.node._evidence`).

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

from veriml.core.errors import Conflict, VerificationError
from veriml.protocol.messages import Job, format_time, parse_time

__all__ = ["ReplayCache"]


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
