"""The OpenAI-compatible API: ``POST /v1/chat/completions``, ``/v1/completions`` and
``/v1/embeddings`` (docs/openai-api.md), over
:class:`~veriml.coordinator.llm.service.CompletionService`.

Request and response shapes are OpenAI's, so its SDKs work unchanged; veriml adds the
``veriml`` member (receipts, token ids, verdict, log inclusion), the ``X-Veriml-Receipt``
header (base64 of the first receipt's DSSE JSON) and, in streams, one ``event: veriml`` before
``data: [DONE]``; while no token flows (a quorum or a prefill check running), a stream sends a
``: keep-alive`` comment every ``sse_keepalive`` seconds, which clients skip but proxies see.
The policy comes from the ``X-Veriml-Policy`` header or the body's
``veriml: {"policy": ...}`` member (the OpenAI SDK's ``extra_body``). Errors are OpenAI error
objects (:mod:`veriml.coordinator.llm.errors`), not problem JSON. A request signed like
``POST /v1/inferences`` (RFC 9421, :mod:`veriml.coordinator.auth`) is logged with its client;
an ``Idempotency-Key`` is the request id, and retrying with it returns the stored answer.

The response builders are pure functions of the service's answer, tested on their own.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Final, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from veriml.coordinator.auth import capability_header, payment_from_headers, read_signed_body
from veriml.coordinator.deps import CompletionsDep, state_of
from veriml.coordinator.disputes.service import DisputeService
from veriml.coordinator.inference.routes import known_size, named_epoch, node_lister
from veriml.coordinator.llm import schemas as llm_schemas
from veriml.coordinator.llm.checks import embedding_vectors
from veriml.coordinator.llm.errors import openai_error
from veriml.coordinator.llm.service import (
    LLM_ENGINE,
    CompletionAnswer,
    CompletionOptions,
    CompletionService,
    LLMModel,
    NodeAnswer,
    Prepared,
)
from veriml.coordinator.llm.transport import TokenPiece
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.coordinator.state import Resources
from veriml.core.canonical import parse_json_object
from veriml.core.completion import RequestKind, relay_digest, relay_model_id, relay_name
from veriml.core.dsse import Envelope
from veriml.core.errors import Error, FormatError
from veriml.protocol.sse import KEEP_ALIVE, sse_event

__all__ = [
    "IDEMPOTENCY_HEADER",
    "POLICY_HEADER",
    "RECEIPT_HEADER",
    "chat_body",
    "completion_body",
    "embedding_body",
    "router",
    "service_over",
    "veriml_member",
]

POLICY_HEADER: Final = "X-Veriml-Policy"
IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
RECEIPT_HEADER: Final = "X-Veriml-Receipt"
SSE: Final = "text/event-stream"
RELAY_ENGINE: Final = "relay"
"""The engine relay nodes list (docs/llm.md, "Relay engine")."""

router = APIRouter(tags=["openai"])


# -- the service ---------------------------------------------------------------------------------


def _relay_nodes(resources: Resources, model: LLMModel) -> list[Candidate]:
    """Live relay nodes serving ``relay:NAME`` that the ledger lets receive jobs, as the
    scheduler sees them: serving the stand-in digest the request is bound to."""
    wanted = relay_model_id(str(model.relay))
    now, live = time.time(), resources.settings.live_after
    ledger = resources.ledger.state()
    return [
        Candidate.of(
            row,
            active=row.active + row.queued,
            capacity=row.capacity,
            models=(model.digest.to_text(),),
            reputation=ledger.reputation_of(row.node_id),
        )
        for row in resources.nodes.all()
        if row.is_live(now, live)
        and RELAY_ENGINE in row.engines
        and wanted in row.models
        and resources.ledger.schedulable(row.node_id)
    ]


def service_over(resources: Resources, disputes: DisputeService) -> CompletionService:
    """The app's completion service over its resources and its dispute service."""
    settings, models = resources.settings, resources.models
    llama_nodes = node_lister(resources, engine=LLM_ENGINE)

    def list_nodes(model: LLMModel) -> list[Candidate]:
        if model.relay is not None:
            return _relay_nodes(resources, model)
        return llama_nodes(model.digest)

    def resolve_model(ref: str) -> LLMModel:
        name = relay_name(ref)
        if name is not None:
            if not 0 < len(name) <= 256:
                raise FormatError("a relayed model is relay:NAME", param="model", got=ref[:80])
            return LLMModel(relay_digest(name), relay=name)
        record = models.resolve(ref)
        if record.io.get("kind") != "gguf":
            raise FormatError(
                "this model is not a language model (GGUF)",
                param="model",
                code="model_not_supported",
                model=ref[:200],
            )
        context = record.io.get("context_length")
        provenance = resources.hub.provenance(record.digest)
        return LLMModel(
            record.digest,
            context if isinstance(context, int) else None,
            provenance=(provenance.model, provenance.namespace),
        )

    return CompletionService(
        engine=resources.engine,
        log=resources.log,
        key=resources.coordinator_key,
        http=resources.http,
        resolve_model=resolve_model,
        list_nodes=list_nodes,
        node_failed=resources.nodes.mark_failed,
        observe=resources.metrics.observer("completion"),
        options=CompletionOptions(
            job_timeout=settings.job_timeout,
            attempts_per_slot=settings.max_job_attempts,
            live_within=settings.live_after,
            max_result_bytes=settings.max_json_bytes,
        ),
        ledger=resources.ledger,
        disputes=disputes,
        beacon=resources.beacon,
    )


# -- request parsing -----------------------------------------------------------------------------


async def _parse(request: Request) -> tuple[dict[str, Any], str, str | None, str | None]:
    """The OpenAI body (without ``veriml``), the policy text, the signing client and the
    visibility the requester chose (``veriml.visibility``)."""
    limit = state_of(request).settings.max_json_bytes
    raw, client = await read_signed_body(request, limit, idempotent=True)
    body = parse_json_object(raw, what="request body")
    extension = body.pop("veriml", None)
    policy = request.headers.get(POLICY_HEADER)
    visibility = None
    if extension is not None:
        if not isinstance(extension, dict) or set(extension) - {"policy", "visibility"}:
            raise FormatError(
                "veriml must be an object with policy and visibility members", param="veriml"
            )
        visibility = extension.get("visibility")
        if visibility not in (None, "private", "public"):
            raise FormatError("veriml.visibility must be private or public", param="veriml")
        member = extension.get("policy", policy or "none")
        if not isinstance(member, str):
            raise FormatError("veriml.policy must be a string", param="veriml.policy")
        if policy is not None and policy != member:
            raise FormatError(
                f"the {POLICY_HEADER} header and veriml.policy differ",
                param="veriml.policy",
                header=policy[:64],
                member=member[:64],
            )
        policy = member
    return body, policy or "none", client, visibility


def _error(exc: Error) -> JSONResponse:
    status, body = openai_error(exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise FormatError(f"{name} must be a boolean", param=name)
    return value


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise FormatError("stream_options must be an object", param="stream_options")
    return _flag(options, "include_usage")


# -- response bodies (pure) ----------------------------------------------------------------------


def _usage(answer: NodeAnswer) -> dict[str, int]:
    prompt, completion = answer.prompt_count, answer.completion_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _openai_id(kind: RequestKind, request_id: str) -> str:
    prefix = {"chat.completion": "chatcmpl", "text_completion": "cmpl", "embedding": "embd"}
    return f"{prefix[kind]}-{request_id}"


def _tool_calls(answer: NodeAnswer) -> list[dict[str, Any]]:
    return [dict(call) for call in answer.tool_calls]


def chat_body(answer: CompletionAnswer, model: str, created: int) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object for ``answer``; ``model`` is the requested id."""
    node = answer.answer
    message: dict[str, Any] = {"role": "assistant", "content": node.content, "refusal": None}
    if node.tool_calls:
        message["tool_calls"] = _tool_calls(node)
    return {
        "id": _openai_id("chat.completion", str(answer.veriml["id"])),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": node.finish_reason}
        ],
        "usage": _usage(node),
        "veriml": veriml_member(answer),
    }


def completion_body(answer: CompletionAnswer, model: str, created: int) -> dict[str, Any]:
    """An OpenAI ``text_completion`` object for ``answer``."""
    node = answer.answer
    return {
        "id": _openai_id("text_completion", str(answer.veriml["id"])),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "text": node.content or "",
                "logprobs": None,
                "finish_reason": node.finish_reason,
            }
        ],
        "usage": _usage(node),
        "veriml": veriml_member(answer),
    }


def embedding_body(
    answer: CompletionAnswer, model: str, encoding: Literal["float", "base64"]
) -> dict[str, Any]:
    """An OpenAI embedding ``list``; ``base64`` is little-endian float32, as OpenAI's."""
    data = []
    for index, vector in enumerate(embedding_vectors(answer.answer)):
        values: Any = (
            base64.b64encode(vector.astype("<f4").tobytes()).decode()
            if encoding == "base64"
            else [float(v) for v in vector]
        )
        data.append({"object": "embedding", "index": index, "embedding": values})
    prompt = answer.answer.prompt_count
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        "veriml": veriml_member(answer),
    }


def veriml_member(answer: CompletionAnswer) -> dict[str, Any]:
    """The ``veriml`` member: the stored answer without ``output`` (which the OpenAI members
    already carry; it is kept so a retried ``Idempotency-Key`` gets the same answer)."""
    return {k: v for k, v in answer.veriml.items() if k != "output"}


def receipt_header(veriml: Mapping[str, Any]) -> str:
    """``X-Veriml-Receipt``: base64 of the first receipt's DSSE envelope JSON."""
    return base64.b64encode(Envelope.from_json(veriml["receipts"][0]).to_bytes()).decode()


def _json(content: Mapping[str, Any], *, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, media_type="application/json", headers=headers)


# -- streams -------------------------------------------------------------------------------------


def _sse(data: Mapping[str, Any] | str, *, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return sse_event(text, event=event)


class _Chunks:
    """The chunk objects of one streamed completion (chat or text)."""

    def __init__(self, kind: RequestKind, request_id: str, model: str, created: int) -> None:
        self.chat = kind == "chat.completion"
        self.base = {
            "id": _openai_id(kind, request_id),
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": created,
            "model": model,
        }

    def choice(self, delta: Mapping[str, Any], finish: str | None = None) -> dict[str, Any]:
        if self.chat:
            choice = {"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish}
        else:
            text = delta.get("content") or ""
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return self.base | {"choices": [choice]}

    def usage(self, answer: NodeAnswer) -> dict[str, Any]:
        return self.base | {"choices": [], "usage": _usage(answer)}

    def veriml(self, member: Mapping[str, Any]) -> dict[str, Any]:
        """The final veriml event's data: a chunk without choices (as the usage chunk is),
        so OpenAI's clients, which read every event's data as a chunk, pass it through."""
        return self.base | {"choices": [], "veriml": dict(member)}


class _Watchdog:
    """Puts :data:`~veriml.protocol.sse.KEEP_ALIVE` on a stream's queue whenever nothing was
    sent for ``interval`` seconds: one timer per stream, re-armed as it fires, rather than a
    timeout around every token."""

    def __init__(self, queue: asyncio.Queue[TokenPiece | bytes | None], interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue = queue
        self._interval = interval
        self._last = self._loop.time()
        self._timer = self._loop.call_later(interval, self._fire)

    def sent(self) -> None:
        """Something went out just now."""
        self._last = self._loop.time()

    def _fire(self) -> None:
        now = self._loop.time()
        if now - self._last >= self._interval:
            self._queue.put_nowait(KEEP_ALIVE)
            self._last = now
        self._timer = self._loop.call_at(self._last + self._interval, self._fire)

    def stop(self) -> None:
        self._timer.cancel()


async def _stream(
    service: CompletionService,
    prepared: Prepared,
    model: str,
    include_usage: bool,
    keepalive: float,
) -> AsyncIterator[bytes]:
    """SSE: a chunk per generated token while the first node generates, the final chunk
    (finish reason; the rest of the content if the tokens streamed fell short of it), usage
    when asked, ``event: veriml`` with the veriml object, ``data: [DONE]``. A failure after the
    stream began is an OpenAI error object as the last data line. Whenever nothing came for
    ``keepalive`` seconds (the prompt read, the other nodes of a quorum, a prefill check, the
    log), a ``: keep-alive`` comment keeps the connection busy."""
    job = prepared.job
    chunks = _Chunks(job.kind, job.request_id, model, int(time.time()))
    queue: asyncio.Queue[TokenPiece | bytes | None] = asyncio.Queue()
    task = asyncio.ensure_future(service.run(prepared, on_token=queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    watchdog = _Watchdog(queue, keepalive)
    streamed = ""
    try:
        if chunks.chat:
            yield _sse(chunks.choice({"role": "assistant", "content": ""}))
        while (piece := await queue.get()) is not None:
            if isinstance(piece, bytes):  # the watchdog's keep-alive
                yield piece
            elif piece.text:
                streamed += piece.text
                yield _sse(chunks.choice({"content": piece.text}))
                watchdog.sent()
        watchdog.stop()
        try:
            answer = task.result()
        except Error as exc:
            yield _sse(openai_error(exc)[1])
            return
        node = answer.answer
        content = node.content or ""
        if content != streamed and content.startswith(streamed):
            yield _sse(chunks.choice({"content": content[len(streamed) :]}))
        if node.tool_calls:
            calls = [{"index": i} | dict(call) for i, call in enumerate(node.tool_calls)]
            yield _sse(chunks.choice({"tool_calls": calls}))
        yield _sse(chunks.choice({}, node.finish_reason))
        if include_usage:
            yield _sse(chunks.usage(node))
        yield _sse(chunks.veriml(veriml_member(answer)), event="veriml")
        yield _sse("[DONE]")
    finally:
        watchdog.stop()
        if not task.done():  # the client went away: stop the nodes' work, log nothing
            task.cancel()


# -- routes --------------------------------------------------------------------------------------

_RESPONSES: Final[dict[int | str, dict[str, Any]]] = {
    200: {"description": "the OpenAI object with a veriml member (or an SSE stream)"},
    400: {"description": "OpenAI error: invalid parameter, context overflow, bad JSON"},
    404: {"description": "OpenAI error: unknown model (model_not_found)"},
    503: {"description": "OpenAI error: no live node runs this model"},
}


async def _complete(
    request: Request,
    service: CompletionService,
    kind: RequestKind,
    build: Callable[[CompletionAnswer, str, int], dict[str, Any]],
) -> Response:
    try:
        body, policy, client, visibility = await _parse(request)
        payment, size = payment_from_headers(request.headers), known_size(request.headers)
        stream = _flag(body, "stream")
        include_usage = _include_usage(body) if stream else False
        model = str(body.get("model"))
        prepared = await service.prepare(
            kind,
            body,
            policy=policy,
            client=client,
            request_id=request.headers.get(IDEMPOTENCY_HEADER),
            payment=payment,
            known_size=size,
            epoch=named_epoch(request.headers),
            visibility=visibility,
        )
        if stream:
            settings = state_of(request).settings
            return StreamingResponse(
                _stream(service, prepared, model, include_usage, settings.sse_keepalive),
                media_type=SSE,
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
                | capability_header(request, prepared.job.request_id),
            )
        answer = await service.run(prepared)
    except Error as exc:
        return _error(exc)
    created = int(time.time())
    headers = {RECEIPT_HEADER: receipt_header(answer.veriml)}
    headers |= capability_header(request, str(answer.veriml["id"]))
    return _json(build(answer, model, created), headers=headers)


@router.post(
    "/v1/chat/completions",
    operation_id="create_chat_completion",
    summary="Chat completion on nodes under a verification policy, logged once",
    responses=_RESPONSES,
    openapi_extra=llm_schemas.OPENAI_CHAT,
)
async def create_chat_completion(request: Request, service: CompletionsDep) -> Response:
    """OpenAI ``chat.completion`` (``stream: true``: SSE chunks) with a ``veriml`` member."""
    return await _complete(request, service, "chat.completion", chat_body)


@router.post(
    "/v1/completions",
    operation_id="create_completion",
    summary="Text completion on nodes under a verification policy, logged once",
    responses=_RESPONSES,
    openapi_extra=llm_schemas.OPENAI_COMPLETION,
)
async def create_completion(request: Request, service: CompletionsDep) -> Response:
    """OpenAI ``text_completion`` (``stream: true``: SSE chunks) with a ``veriml`` member."""
    return await _complete(request, service, "text_completion", completion_body)


@router.post(
    "/v1/embeddings",
    operation_id="create_embedding",
    summary="Embeddings on nodes under a verification policy, logged once",
    responses=_RESPONSES,
    openapi_extra=llm_schemas.OPENAI_EMBEDDING,
)
async def create_embedding(request: Request, service: CompletionsDep) -> Response:
    """OpenAI embedding ``list`` (``encoding_format`` float or base64) with a ``veriml``
    member."""
    try:
        body, policy, client, visibility = await _parse(request)
        payment, size = payment_from_headers(request.headers), known_size(request.headers)
        encoding = body.pop("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise FormatError("encoding_format must be float or base64", param="encoding_format")
        model = str(body.get("model"))
        answer = await service.create(
            "embedding",
            body,
            policy=policy,
            client=client,
            request_id=request.headers.get(IDEMPOTENCY_HEADER),
            payment=payment,
            known_size=size,
            epoch=named_epoch(request.headers),
            visibility=visibility,
        )
    except Error as exc:
        return _error(exc)
    headers = {RECEIPT_HEADER: receipt_header(answer.veriml)}
    headers |= capability_header(request, str(answer.veriml["id"]))
    return _json(embedding_body(answer, model, encoding), headers=headers)
