"""The completion service's transport to nodes: a job posted, its answer streamed back.

A node answers ``POST /v1/jobs`` with an NDJSON stream (``{"token", "text"}`` lines, then
``{"result"}`` or ``{"error"}``; docs/llm.md, "Node API") or with one JSON result. The tokens
go to a :class:`TokenSink`, which keeps the caller's stream to one node's tokens even when
nodes fail. Nothing a node says in an error reaches a client but its status and check names.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

from veriml.coordinator.llm.errors import NodeRefusedError
from veriml.coordinator.nodes.dispatch import node_problem, unreachable
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.errors import Check, Error, NodeUnavailableError, VerificationError

__all__ = ["NDJSON", "NodeTransport", "TokenPiece", "TokenSink"]

NDJSON: Final = "application/x-ndjson"
_MAX_ERROR_BYTES: Final = 64 << 10


@dataclass(frozen=True, slots=True)
class TokenPiece:
    """One generated token as streamed to the caller: its id and decoded text."""

    token: int
    text: str


class TokenSink:
    """Forwards the tokens of one node at a time to ``emit``.

    Every node of a request streams; the first to send a token owns the stream. If the owner
    fails, the next node to stream takes over and its first tokens are skipped up to the number
    already forwarded: with the same seed every honest node generates the same tokens, so the
    caller sees each token once. (The final ``veriml`` object is authoritative either way.)
    """

    def __init__(self, emit: Callable[[TokenPiece], None]) -> None:
        self._emit = emit
        self._owner: str | None = None
        self._sent = 0
        self._seen: dict[str, int] = {}

    def feed(self, node_id: str, piece: TokenPiece) -> None:
        """A token from ``node_id``, forwarded if that node owns (or may take) the stream."""
        if self._owner is None:
            self._owner = node_id
        if node_id != self._owner:
            return
        position = self._seen.get(node_id, 0)
        self._seen[node_id] = position + 1
        if position >= self._sent:
            self._sent += 1
            self._emit(piece)

    def failed(self, node_id: str) -> None:
        """``node_id`` failed: another node may take over the stream."""
        if self._owner == node_id:
            self._owner = None
        self._seen.pop(node_id, None)


async def _lines(response: httpx.Response, limit: int, node: str) -> AsyncIterator[bytes]:
    """The response body's lines, the whole body bounded by ``limit`` bytes."""
    buffer = b""
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise VerificationError(
                "node answer is larger than the limit", check=Check.RESULT, node=node, limit=limit
            )
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _event(line: bytes, node: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError("node streamed a line that is not JSON", node=node) from exc
    if not isinstance(event, dict):
        raise VerificationError("node streamed a line that is not a JSON object", node=node)
    return event


def _problem(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {"detail": data[:300].decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"detail": str(parsed)[:300]}


def _failed(node: str, status: int, problem: Mapping[str, Any]) -> Error:
    """The error for a node's failure status (or streamed ``error``) and its problem JSON."""
    if 400 <= status < 500:
        return NodeRefusedError("node refused the job", node=node, status=status, problem=problem)
    return NodeUnavailableError(
        "node failed the job", node=node, status=status, detail=str(problem.get("detail"))[:300]
    )


class NodeTransport:
    """Posts completion and prefill jobs to nodes over ``http``, each bounded by ``timeout``
    seconds and its answer by ``max_result_bytes``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        timeout: float,
        max_result_bytes: int,
        node_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._http = http
        self._timeout = timeout
        self._max_result_bytes = max_result_bytes
        self._node_failed = node_failed

    async def post(
        self, node: Candidate, body: Mapping[str, Any], sink: TokenSink | None = None
    ) -> Mapping[str, Any]:
        """Post a job body to ``node`` and read its answer (tokens to ``sink``); a node that
        did not answer is reported (``node_failed``) so the scheduler leaves it out until it
        heartbeats."""
        try:
            return await self._post(node, body, sink)
        except NodeUnavailableError:
            if self._node_failed is not None:
                await asyncio.to_thread(self._node_failed, node.node_id)
            raise

    async def _post(
        self, node: Candidate, body: Mapping[str, Any], sink: TokenSink | None
    ) -> Mapping[str, Any]:
        """An NDJSON stream (tokens, then the result) or one JSON result."""
        timeout = self._timeout
        url = node.endpoint.rstrip("/") + "/v1/jobs"
        headers = {"Accept": NDJSON}
        limit = self._max_result_bytes
        try:
            async with self._http.stream(
                "POST", url, json=body, headers=headers, timeout=httpx.Timeout(timeout)
            ) as response:
                status = response.status_code
                if status >= 400:
                    data = b""
                    async for chunk in response.aiter_bytes():
                        data += chunk
                        if len(data) > _MAX_ERROR_BYTES:
                            break
                    raise _failed(node.node_id, status, _problem(data))
                if status != 200:
                    raise VerificationError(
                        "node answered with an unexpected status",
                        check=Check.RESULT,
                        node=node.node_id,
                        status=status,
                    )
                return await self._read_result(response, node.node_id, sink, limit)
        except httpx.HTTPError as exc:
            raise unreachable(node, exc) from exc

    async def _read_result(
        self, response: httpx.Response, node: str, sink: TokenSink | None, limit: int
    ) -> Mapping[str, Any]:
        streamed = response.headers.get("content-type", "").startswith(NDJSON)
        async for line in _lines(response, limit, node):
            event = _event(line, node)
            if not streamed:
                return event
            if "token" in event:
                token, text = event.get("token"), event.get("text", "")
                if not isinstance(token, int) or isinstance(token, bool):
                    raise VerificationError("node streamed a token that is not an id", node=node)
                if sink is not None:
                    sink.feed(node, TokenPiece(token, text if isinstance(text, str) else ""))
            elif isinstance(event.get("result"), dict):
                return dict(event["result"])
            elif isinstance(event.get("error"), dict):
                # A streamed error is summarised like an error answer: nothing a node says in
                # it reaches a client but its status and check names (no SSRF echo).
                status = event["error"].get("status", 500)
                status = status if isinstance(status, int) and 400 <= status < 600 else 500
                raise _failed(node, status, node_problem(status, event["error"]))
            else:
                raise VerificationError("node streamed an unknown event", node=node)
        raise VerificationError(
            "node's answer ended without a result", check=Check.RESULT, node=node
        )
