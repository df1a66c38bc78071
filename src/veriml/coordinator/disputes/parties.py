"""The parties of a dispute (docs/verification.md, "Disputes"): what the engine in
:mod:`veriml.coordinator.disputes.service` asks and checks, behind one small interface.

- :class:`NodeParty`: a node, first sent the same request again as a traced job when its
  receipt has no trace (a *retrace*), then asked for reveals through its trace endpoints.
  A busy node is not a loser: a node that answers 503 (or 429, 5xx, or cannot be reached for
  a moment) is asked again with backoff until the move's deadline, and only one that never
  answers in time loses (``timeout``);
- :class:`RemoteParty`: a challenger that moves through the coordinator's HTTP routes, each
  move awaited with its deadline.

A party is trusted with nothing: every reveal is checked against its commitment
(:func:`~veriml.verify.dispute.check_reveal`) and every tensor against its digest.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx
import numpy.typing as npt

from veriml.coordinator.nodes.dispatch import JobRejectedError, JobSpec, dispatch
from veriml.coordinator.nodes.scheduler import Candidate, node_key
from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    ConflictError,
    Error,
    FormatError,
    NodeUnavailableError,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.receipt import InferencePredicate, TraceCommitment
from veriml.core.tensors import tensor_from_json
from veriml.core.timestamps import format_time
from veriml.protocol.http_signatures import sign_request
from veriml.runtime import TraceEntry
from veriml.verify import verify_receipt
from veriml.verify.dispute import Reason, TraceLayout

__all__ = [
    "EMPTY_TRACE",
    "AbsentParty",
    "Claim",
    "NodeParty",
    "Party",
    "PartyFaultError",
    "RemoteParty",
    "check_commitment",
    "parse_reveal",
    "receipt_claim",
]

Array = npt.NDArray[Any]
T = TypeVar("T")
EMPTY_TRACE = TraceCommitment(Digest.of(b""), 0)
_EMPTY = Digest.of(b"")
"""The commitment to nothing (the RFC 9162 root of the empty tree, size 0): what a party that
produced no trace is recorded with."""
_MAX_PROOF = 64
_BACKOFF_START, _BACKOFF_MAX = 0.1, 2.0
_MAX_JOB_VALIDITY = 300.0  # a node's default cap on a job's validity window
# A retrace refused for being busy or for the clocks (issued before the node restarted,
# expired on arrival) is asked again; any other refusal is the node's answer.
_RETRY_STATUSES = frozenset({409, 410, 429})


class _BusyError(Exception):
    """A node answer that is no answer yet (busy, unreachable): ask again."""

    def __init__(self, status: int | None, retry_after: float | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else None


async def until_answered(
    attempt: Callable[[float], Awaitable[T]], timeout: float, *, node: str
) -> T:
    """``attempt(seconds_left)`` until it answers; a :class:`_BusyError` one is asked again after
    a backoff (0.1 s doubling to 2 s, or the node's ``Retry-After``) while the move's
    ``timeout`` lasts, then the node loses by ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wait = _BACKOFF_START
    attempts = 0
    while True:
        left = deadline - loop.time()
        attempts += 1
        try:
            return await attempt(max(left, 0.001))
        except _BusyError as busy:
            pause = min(wait, busy.retry_after) if busy.retry_after else wait
            if deadline - loop.time() <= pause:
                raise PartyFaultError(
                    "node did not answer the dispute query in time",
                    reason="timeout",
                    node=node,
                    status=busy.status,
                    attempts=attempts,
                ) from busy
            await asyncio.sleep(pause)
            wait = min(wait * 2, _BACKOFF_MAX)


class PartyFaultError(VerificationError):
    """A party failed a move; it loses the dispute with ``reason``."""

    def __init__(self, message: str, *, reason: Reason, **evidence: Any) -> None:
        super().__init__(message, check=Check.DISPUTE, reason=reason, **evidence)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Claim:
    """What a party stands by: its account, its node (if it is one), its output digests,
    (once known) its trace commitment and, for a node, its own signed statement about the
    inference (its receipt): the ledger admits no node into a dispute it did not sign into."""

    account: str
    outputs: Mapping[str, Digest]
    trace: TraceCommitment | None = None
    node: str | None = None
    statement: Envelope | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"account": self.account}
        if self.node is not None:
            out["node"] = self.node
        out["trace"] = None if self.trace is None else self.trace.to_json()
        out["outputs"] = {name: d.to_text() for name, d in sorted(self.outputs.items())}
        return out


class Party(Protocol):
    """One side of a dispute. Every method raises :class:`PartyFaultError` when the party fails
    the move (``timeout`` when it does not answer within ``timeout`` seconds)."""

    @property
    def claim(self) -> Claim: ...

    async def open(self, timeout: float) -> TraceCommitment:
        """The trace commitment the party stands by (a node may have to retrace first)."""
        ...

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        """Trace entry ``index`` and its inclusion proof against the party's root."""
        ...

    async def tensors(self, names: Sequence[str], timeout: float) -> dict[str, Array]:
        """Recorded tensors by name (checked by the caller against agreed digests)."""
        ...


def receipt_claim(receipt: Envelope) -> tuple[InferencePredicate, dict[str, Digest]]:
    """The predicate and output digests of a receipt already verified (from the log)."""
    statement = Statement.from_bytes(receipt.payload)
    predicate = InferencePredicate.from_json(statement.predicate)
    return predicate, {s.name: s.digest for s in statement.subjects}


def check_commitment(party: str, commitment: TraceCommitment, layout: TraceLayout) -> None:
    if commitment.size != layout.size:
        raise PartyFaultError(
            f"the {party}'s trace does not have the model's size",
            reason="inconsistent",
            expected=layout.size,
            got=commitment.size,
        )


# -- parties ---------------------------------------------------------------------------------------


class NodeParty:
    """A node, asked over HTTP: a retrace job when its receipt is untraced, then its trace
    endpoints (``GET /v1/traces/{request_id}/entries/{index}`` and ``/tensors/{name}``)."""

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        key: SigningKey,
        node: Candidate,
        spec: JobSpec,
        outputs: Mapping[str, Digest],
        trace: TraceCommitment | None = None,
        job_timeout: float = 60.0,
        max_tensor_bytes: int = 64 << 20,
        retain: float = 86_400.0,
        receipt: Envelope | None = None,
    ) -> None:
        self._http = http
        self._key = key
        self._node = node
        self._spec = spec
        self._outputs = dict(outputs)
        self._trace = trace
        self._job_timeout = job_timeout
        self._max_tensor_bytes = max_tensor_bytes
        self._retain = retain
        self._receipt = receipt
        self.retraced = False

    @property
    def node(self) -> Candidate:
        """The node as the coordinator reaches it."""
        return self._node

    @property
    def spec(self) -> JobSpec:
        return self._spec

    @property
    def claim(self) -> Claim:
        node = self._node.node_id
        return Claim(node, self._outputs, self._trace, node, self._receipt)

    async def open(self, timeout: float) -> TraceCommitment:
        if self._trace is not None:
            return self._trace
        # 1. The same request as a traced job, its trace kept for the dispute: its receipt
        # must repeat the challenged outputs. A busy node is asked again until the deadline.
        keep = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self._retain)
        spec = JobSpec(
            request_id=self._spec.request_id,
            model=self._spec.model,
            input_digests=self._spec.input_digests,
            inputs_json=self._spec.inputs_json,
            policy=self._spec.policy,
            trace=True,
            retain_until=format_time(keep),
        )

        async def attempt(left: float) -> Any:
            try:
                return await dispatch(
                    self._http, self._node, spec, self._key, timeout=min(left, _MAX_JOB_VALIDITY)
                )
            except NodeUnavailableError as exc:
                raise _BusyError(exc.evidence.get("status")) from exc
            except JobRejectedError as exc:
                if exc.status in _RETRY_STATUSES:
                    raise _BusyError(exc.status) from exc
                raise

        try:
            result = await until_answered(
                attempt, max(timeout, self._job_timeout), node=self._node.node_id
            )
        except PartyFaultError:
            raise
        except Error as exc:
            raise PartyFaultError(
                "node refused the retrace job",
                reason="inconsistent",
                node=self._node.node_id,
                detail=exc.diagnostics()[:200],
            ) from exc
        try:
            verified = verify_receipt(result, node_key=node_key(self._node.public_key))
        except Error as exc:
            raise PartyFaultError(
                "retrace receipt does not verify under the node's key",
                reason="inconsistent",
                node=self._node.node_id,
                detail=exc.diagnostics()[:200],
            ) from exc
        p = verified.predicate
        if (
            p.request_id != spec.request_id
            or p.model_digest != spec.model
            or dict(p.inputs) != dict(spec.input_digests)
            or p.trace is None
        ):
            raise PartyFaultError(
                "retrace receipt does not answer the disputed request with a trace",
                reason="inconsistent",
                node=self._node.node_id,
            )
        if dict(verified.output_digests) != self._outputs:
            raise PartyFaultError(
                "retrace outputs differ from the challenged receipt's",
                reason="inconsistent",
                node=self._node.node_id,
            )
        self._trace = p.trace
        self.retraced = True
        return p.trace

    def _url(self, suffix: str) -> str:
        return f"{self._node.endpoint.rstrip('/')}/v1/traces/{self._spec.request_id}/{suffix}"

    async def _get(self, url: str, timeout: float) -> httpx.Response:
        """One dispute query, asked again while the node is busy or unreachable (until
        ``timeout``); a 4xx answer (no such trace, no such tensor) is final."""

        async def attempt(left: float) -> httpx.Response:
            # Signed afresh each time: the node reads traces to its coordinator only.
            headers = sign_request(self._key, "GET", url, _EMPTY)
            try:
                response = await self._http.get(url, headers=headers, timeout=httpx.Timeout(left))
            except httpx.HTTPError as exc:
                raise _BusyError(None) from exc
            status = response.status_code
            if status == 429 or status >= 500:
                raise _BusyError(status, _retry_after(response))
            if status != 200:
                raise PartyFaultError(
                    "node could not answer the dispute query",
                    reason="invalid-proof",
                    node=self._node.node_id,
                    status=status,
                )
            return response

        return await until_answered(attempt, timeout, node=self._node.node_id)

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        response = await self._get(self._url(f"entries/{index}"), timeout)
        try:
            body = parse_json_object(response.content, what="trace reveal")
            return parse_reveal(body, index=index, commitment=self._trace)
        except FormatError as exc:
            raise PartyFaultError(
                "node's reveal is malformed",
                reason="invalid-proof",
                node=self._node.node_id,
                detail=exc.diagnostics()[:200],
            ) from exc

    async def tensors(self, names: Sequence[str], timeout: float) -> dict[str, Array]:
        deadline = time.monotonic() + timeout
        out: dict[str, Array] = {}
        for name in names:
            left = max(deadline - time.monotonic(), 0.001)
            response = await self._get(self._url(f"tensors/{name}"), left)
            try:
                obj = parse_json_object(response.content, what="trace tensor")
                out[name] = tensor_from_json(obj, max_bytes=self._max_tensor_bytes)
            except FormatError as exc:
                raise PartyFaultError(
                    "node's tensor is malformed",
                    reason="invalid-proof",
                    node=self._node.node_id,
                    tensor=name[:200],
                ) from exc
        return out


def parse_reveal(
    body: Mapping[str, Any], *, index: int, commitment: TraceCommitment | None
) -> tuple[TraceEntry, list[bytes]]:
    """A reveal ``{"index", "entry", "proof": [hex], "root"?, "size"?}`` for ``index``.

    ``root``/``size``, when given, must be the party's commitment (a node names them)."""
    if body.get("index", index) != index:
        raise FormatError("reveal is for another index", expected=index, got=body.get("index"))
    if commitment is not None:
        root, size = body.get("root"), body.get("size")
        if root is not None and root != commitment.root.to_text():
            raise FormatError("reveal names another trace root", expected=commitment.root)
        if size is not None and size != commitment.size:
            raise FormatError("reveal names another trace size", expected=commitment.size)
    proof = body.get("proof")
    if not isinstance(proof, list) or len(proof) > _MAX_PROOF:
        raise FormatError("reveal proof must be a list of hex hashes")
    hashes: list[bytes] = []
    for item in proof:
        if not isinstance(item, str) or len(item) != 64:
            raise FormatError("reveal proof hashes are 64 hex digits")
        try:
            hashes.append(bytes.fromhex(item))
        except ValueError as exc:
            raise FormatError("reveal proof hashes are 64 hex digits") from exc
    return TraceEntry.from_json(body.get("entry")), hashes


class RemoteParty:
    """A challenger that moves through ``POST /v1/disputes/{id}/reveal`` and ``/tensors``.

    Each ``reveal``/``tensors`` call publishes a query (:attr:`query`) and waits for the
    matching submission until the deadline."""

    def __init__(self, claim: Claim) -> None:
        if claim.trace is None:
            raise FormatError("a challenger commits to a trace")
        self._claim = claim
        self._waiting: tuple[str, Any, asyncio.Future[Any]] | None = None
        self.deadline: float | None = None
        self.moved = asyncio.Event()

    @property
    def claim(self) -> Claim:
        return self._claim

    @property
    def query(self) -> dict[str, Any] | None:
        """What the challenger must post next (``{"index": i}`` or ``{"tensors": [names]}``)."""
        if self._waiting is None:
            return None
        kind, what, _ = self._waiting
        return {"index": what} if kind == "reveal" else {"tensors": list(what)}

    async def open(self, timeout: float) -> TraceCommitment:
        assert self._claim.trace is not None
        return self._claim.trace

    async def _wait(self, kind: str, what: Any, timeout: float) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting = (kind, what, future)
        self.deadline = time.time() + timeout
        self.moved.set()
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise PartyFaultError(
                "challenger did not answer before the deadline", reason="timeout", query=kind
            ) from exc
        finally:
            self._waiting = None
            self.deadline = None

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        result: tuple[TraceEntry, list[bytes]] = await self._wait("reveal", index, timeout)
        return result

    async def tensors(self, names: Sequence[str], timeout: float) -> dict[str, Array]:
        result: dict[str, Array] = await self._wait("tensors", tuple(names), timeout)
        return result

    def submit_reveal(self, body: Mapping[str, Any]) -> None:
        """Take a posted reveal (``ConflictError`` when no reveal of that index is asked)."""
        waiting = self._waiting
        if waiting is None or waiting[0] != "reveal" or waiting[2].done():
            raise ConflictError("the dispute is not waiting for a reveal", query=str(self.query))
        index = body.get("index")
        if index != waiting[1]:
            raise ConflictError(
                "the dispute asks for another index", expected=waiting[1], got=index
            )
        waiting[2].set_result(parse_reveal(body, index=waiting[1], commitment=None))

    def submit_tensors(self, tensors: Mapping[str, Array]) -> None:
        """Take posted tensors; they must include every asked name."""
        waiting = self._waiting
        if waiting is None or waiting[0] != "tensors" or waiting[2].done():
            raise ConflictError("the dispute is not waiting for tensors", query=str(self.query))
        missing = sorted(set(waiting[1]) - set(tensors))
        if missing:
            raise FormatError("tensors asked for are missing", missing=",".join(missing)[:200])
        waiting[2].set_result({name: tensors[name] for name in waiting[1]})


class AbsentParty:
    """A side of a stored dispute that can no longer be reached (its model or inputs are
    gone after a restart): every move faults, and the dispute closes without a winner."""

    def __init__(self, claim: Claim) -> None:
        self._claim = claim

    @property
    def claim(self) -> Claim:
        return self._claim

    async def open(self, timeout: float) -> TraceCommitment:
        raise PartyFaultError("party cannot be reached", reason="timeout")

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        raise PartyFaultError("party cannot be reached", reason="timeout")

    async def tensors(self, names: Sequence[str], timeout: float) -> dict[str, Array]:
        raise PartyFaultError("party cannot be reached", reason="timeout")
