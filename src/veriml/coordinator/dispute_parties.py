"""The parties of a dispute (docs/verification.md, "Disputes"): what the engine in
:mod:`veriml.coordinator.disputes` asks and checks, behind one small interface.

- :class:`NodeParty`: a node, first sent the same request again as a traced job when its
  receipt has no trace (a *retrace*), then asked for reveals through its trace endpoints;
- :class:`RemoteParty`: a challenger that moves through the coordinator's HTTP routes, each
  move awaited with its deadline.

A party is trusted with nothing: every reveal is checked against its commitment
(:func:`~veriml.verify.dispute.check_reveal`) and every tensor against its digest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import numpy.typing as npt

from veriml.coordinator.dispatch import JobSpec, dispatch
from veriml.coordinator.scheduler import Candidate, node_key
from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Conflict,
    Error,
    FormatError,
    NodeUnavailable,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.receipt import InferencePredicate, TraceCommitment
from veriml.core.tensors import tensor_from_json
from veriml.runtime import TraceEntry
from veriml.verify import verify_receipt
from veriml.verify.dispute import Reason, TraceLayout

__all__ = [
    "EMPTY_TRACE",
    "Claim",
    "NodeParty",
    "Party",
    "PartyFault",
    "RemoteParty",
    "check_commitment",
    "parse_reveal",
    "receipt_claim",
]

Array = npt.NDArray[Any]
EMPTY_TRACE = TraceCommitment(Digest.of(b""), 0)
"""The commitment to nothing (the RFC 9162 root of the empty tree, size 0): what a party that
produced no trace is recorded with."""
_MAX_PROOF = 64


class PartyFault(VerificationError):
    """A party failed a move; it loses the dispute with ``reason``."""

    def __init__(self, message: str, *, reason: Reason, **evidence: Any) -> None:
        super().__init__(message, check="dispute", reason=reason, **evidence)
        self.reason: Reason = reason


@dataclass(frozen=True, slots=True)
class Claim:
    """What a party stands by: its account, its node (if it is one), its output digests and
    (once known) its trace commitment."""

    account: str
    outputs: Mapping[str, Digest]
    trace: TraceCommitment | None = None
    node: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"account": self.account}
        if self.node is not None:
            out["node"] = self.node
        out["trace"] = None if self.trace is None else self.trace.to_json()
        out["outputs"] = {name: d.to_text() for name, d in sorted(self.outputs.items())}
        return out


class Party(Protocol):
    """One side of a dispute. Every method raises :class:`PartyFault` when the party fails
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
        raise PartyFault(
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
    ) -> None:
        self._http = http
        self._key = key
        self._node = node
        self._spec = spec
        self._outputs = dict(outputs)
        self._trace = trace
        self._job_timeout = job_timeout
        self._max_tensor_bytes = max_tensor_bytes
        self.retraced = False

    @property
    def claim(self) -> Claim:
        return Claim(self._node.node_id, self._outputs, self._trace, self._node.node_id)

    async def open(self, timeout: float) -> TraceCommitment:
        if self._trace is not None:
            return self._trace
        # 1. The same request as a traced job: its receipt must repeat the challenged outputs.
        spec = JobSpec(
            request_id=self._spec.request_id,
            model=self._spec.model,
            input_digests=self._spec.input_digests,
            inputs_json=self._spec.inputs_json,
            policy=self._spec.policy,
            trace=True,
        )
        try:
            result = await dispatch(
                self._http, self._node, spec, self._key, timeout=max(timeout, self._job_timeout)
            )
        except NodeUnavailable as exc:
            raise PartyFault(
                "node did not run the retrace job", reason="timeout", node=self._node.node_id
            ) from exc
        except Error as exc:
            raise PartyFault(
                "node refused the retrace job",
                reason="inconsistent",
                node=self._node.node_id,
                detail=exc.diagnostics()[:200],
            ) from exc
        try:
            verified = verify_receipt(result, node_key=node_key(self._node.public_key))
        except Error as exc:
            raise PartyFault(
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
            raise PartyFault(
                "retrace receipt does not answer the disputed request with a trace",
                reason="inconsistent",
                node=self._node.node_id,
            )
        if dict(verified.output_digests) != self._outputs:
            raise PartyFault(
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
        try:
            response = await self._http.get(url, timeout=httpx.Timeout(timeout))
        except httpx.HTTPError as exc:
            raise PartyFault(
                "node did not answer the dispute query",
                reason="timeout",
                node=self._node.node_id,
                error=type(exc).__name__,
            ) from exc
        if response.status_code != 200:
            reason: Reason = "timeout" if response.status_code >= 500 else "invalid-proof"
            raise PartyFault(
                "node could not answer the dispute query",
                reason=reason,
                node=self._node.node_id,
                status=response.status_code,
            )
        return response

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        response = await self._get(self._url(f"entries/{index}"), timeout)
        try:
            body = parse_json_object(response.content, what="trace reveal")
            return parse_reveal(body, index=index, commitment=self._trace)
        except FormatError as exc:
            raise PartyFault(
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
                raise PartyFault(
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
            raise PartyFault(
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
        """Take a posted reveal (``Conflict`` when no reveal of that index is asked)."""
        waiting = self._waiting
        if waiting is None or waiting[0] != "reveal" or waiting[2].done():
            raise Conflict("the dispute is not waiting for a reveal", query=str(self.query))
        index = body.get("index")
        if index != waiting[1]:
            raise Conflict("the dispute asks for another index", expected=waiting[1], got=index)
        waiting[2].set_result(parse_reveal(body, index=waiting[1], commitment=None))

    def submit_tensors(self, tensors: Mapping[str, Array]) -> None:
        """Take posted tensors; they must include every asked name."""
        waiting = self._waiting
        if waiting is None or waiting[0] != "tensors" or waiting[2].done():
            raise Conflict("the dispute is not waiting for tensors", query=str(self.query))
        missing = sorted(set(waiting[1]) - set(tensors))
        if missing:
            raise FormatError("tensors asked for are missing", missing=",".join(missing)[:200])
        waiting[2].set_result({name: tensors[name] for name in waiting[1]})
