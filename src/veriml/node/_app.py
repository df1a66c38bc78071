"""The node's HTTP API (docs/network.md, "Node HTTP API") and its process lifecycle.

Routes -> the services in this package. Every error is RFC 9457 problem JSON
(https://www.rfc-editor.org/rfc/rfc9457): 400 malformed body or trace index, 403 job not
signed by our coordinator or not for this node, 404 unknown trace or kept tensor, 409 replay,
410 expired job, 413 body over the limit, 422 inputs (or an LLM job's request) that do not
match the job or the model, 502 a model the hub served that fails verification, 503 busy or
shutting down (with ``Retry-After``), 504 job timeout. A completion job asked for with
``Accept: application/x-ndjson`` streams NDJSON lines; an error after the first line is the
last line, ``{"error": <problem>}`` (docs/llm.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veriml.core.completion import relay_model_id
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import (
    Check,
    ConflictError,
    Error,
    ExecutionError,
    FormatError,
    InvalidInputError,
    InvalidTensorError,
    KeyFileError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    SignatureError,
    StorageError,
    VerificationError,
)
from veriml.core.keys import SigningKey, generate_key, load_private_key, load_public_key
from veriml.node._byzantine import behaviour_for
from veriml.node._config import NodeConfig
from veriml.node._coordinator import CoordinatorLink
from veriml.node._evidence import AnsweredRequests, TraceStore
from veriml.node._jobs import JobService
from veriml.node._llm import CompletionEngine, LLMJobs
from veriml.node._memory import ReplayCache
from veriml.node._models import ModelCache
from veriml.protocol.accounts import OperatorBinding
from veriml.protocol.http_signatures import verify_request
from veriml.protocol.messages import format_time
from veriml.protocol.openapi import (
    JSON,
    JobRequest,
    Responses,
    complete_document,
    json_body,
    problems,
)
from veriml.runtime.llm import LLMSettings

__all__ = ["NodeState", "create_node_app", "load_node_key", "serve_node"]

log = logging.getLogger("veriml.node")

_PROBLEM_TYPE = "https://veriml.dev/problems/"
# Checks on the job message itself: the coordinator's signature and the addressee.
_FORBIDDEN_CHECKS = frozenset(
    {"job-signature", "payload-type", "message-type", "job-node", "job-time", "job-validity"}
    | {"access", "request-signature"}
)
_TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def load_node_key(path: Path, passphrase: bytes | None) -> SigningKey:
    """The node's Ed25519 key from ``path``; created (mode 0600, plus ``.pub``) if absent."""
    if path.exists():
        return load_private_key(path, passphrase=passphrase, kind="ed25519")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key("ed25519")
    key.save(path, passphrase=passphrase)
    log.info("created node key %s at %s", key.key_id, path)
    return key


def load_binding(config: NodeConfig, key: SigningKey) -> Envelope:
    """The operator's binding of this node: read from ``operator_binding`` (and checked to be
    for this node), or signed now with ``operator_key``. A binding for another node, or one
    its operator did not sign, stops the node at start (:class:`VerificationError`)."""
    if config.operator_binding is not None:
        try:
            envelope = Envelope.from_bytes(config.operator_binding.read_bytes())
        except OSError as exc:
            raise KeyFileError(
                "cannot read the operator binding", path=str(config.operator_binding)
            ) from exc
        OperatorBinding.open(envelope, node=key.key_id)
        return envelope
    assert config.operator_key is not None  # NodeConfig requires one of the two
    operator = load_private_key(config.operator_key, passphrase=config.operator_passphrase())
    return OperatorBinding.of(operator, key.key_id).sign(operator)


def status_for(exc: Error) -> int:
    """The HTTP status a veriml error answers with on the node API."""
    if isinstance(exc, LimitExceededError):
        return 413
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, NodeUnavailableError):
        return 504 if "timeout_seconds" in exc.evidence else 503
    if isinstance(exc, VerificationError):
        if exc.check == "job-expired":
            return 410
        if exc.check in _FORBIDDEN_CHECKS:
            return 403
        if exc.check in ("job-inputs", "job-request", "job-retention"):
            return 422
        return 502  # the hub served a model that does not verify
    if isinstance(exc, InvalidTensorError | InvalidInputError):
        return 422
    if isinstance(exc, FormatError):
        return 400
    if isinstance(exc, KeyFileError):
        return 502  # the hub's publisher key is unusable
    if isinstance(exc, StorageError):
        return 503
    if isinstance(exc, ExecutionError):
        return 500
    return 502  # InvalidModelError: what the hub served is not a valid model


def problem_json(status: int, detail: str, **members: Any) -> dict[str, Any]:
    """An RFC 9457 problem details object."""
    title = _TITLES.get(status, "Error")
    return {
        "type": _PROBLEM_TYPE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        **members,
    }


def problem(status: int, detail: str, **members: Any) -> JSONResponse:
    """An RFC 9457 problem details response."""
    body = problem_json(status, detail, **members)
    headers = {"Retry-After": str(members["retry_after"])} if "retry_after" in members else None
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


_RESERVED = frozenset({"type", "title", "status", "detail", "instance"})


def _evidence(exc: Error) -> dict[str, Any]:
    """The error's evidence as extension members; RFC 9457's own names are never overridden."""
    members: dict[str, Any] = {
        k: v if isinstance(v, int | float) else str(v)
        for k, v in exc.evidence.items()
        if k not in _RESERVED
    }
    if isinstance(exc, VerificationError) and exc.check:
        members["check"] = exc.check
    return members


def _has_llama_cpp() -> bool:
    # Found, not imported: llama.cpp loads only when a node loads a GGUF model.
    return importlib.util.find_spec("llama_cpp") is not None


def _relay_engine(config: NodeConfig) -> CompletionEngine | None:
    """The relay engine (docs/llm.md, "Relay engine") when the node fronts an upstream API."""
    if config.relay_url is None or config.relay_model is None:
        return None
    from veriml.node._relay import RelayEngine

    return RelayEngine(
        config.relay_url,
        config.relay_model,
        key_env=config.relay_key_env,
        timeout=config.job_timeout,
    )


def _engines(config: NodeConfig) -> tuple[str, ...]:
    """What the descriptor says the node runs: a relay, or ONNX graphs and (with llama.cpp
    installed) GGUF language models."""
    if config.relay_url is not None:
        return ("relay",)
    return ("onnxruntime", "llama.cpp") if _has_llama_cpp() else ("onnxruntime",)


def _served_models(config: NodeConfig) -> tuple[str, ...]:
    if config.relay_model is not None:
        return (relay_model_id(config.relay_model),)
    return ("*",)


class NodeState:
    """Everything a running node holds; created in the app's lifespan, stored on
    ``app.state.node``."""

    def __init__(self, config: NodeConfig, key: SigningKey) -> None:
        self.config = config
        self.key = key
        self.started_at = dt.datetime.now(dt.UTC)
        self.models = ModelCache(
            config.cache_dir,
            config.coordinator,
            max_bytes=config.max_model_bytes,
            profile=config.profile,
            timeout=config.job_timeout,
            llm_settings=LLMSettings(n_ctx=config.llm_ctx, n_threads=config.llm_threads),
            max_llm_loaded=config.llm_max_loaded,
        )
        self.relay = _relay_engine(config)
        # Admitted job ids survive a restart in HOME/replay (docs/node.md, "Replay protection").
        self.replay = ReplayCache(
            started_at=self.started_at,
            max_validity=dt.timedelta(seconds=config.max_job_validity),
            journal=config.home / "replay",
        )
        self.traces = TraceStore(
            config.traces_dir,
            retention=config.trace_retention,
            max_bytes=config.max_trace_bytes,
            max_retention=config.max_retention,
            hold=config.trace_hold,
            max_tensor_bytes=config.max_body_bytes,
        )
        self.jobs = JobService(
            key=key,
            models=self.models,
            replay=self.replay,
            traces=self.traces,
            concurrency=config.concurrency,
            queue_length=config.queue_length,
            job_timeout=config.job_timeout,
            max_tensor_bytes=config.max_body_bytes,
            behaviour=behaviour_for(config.byzantine, key),
            llm=LLMJobs(key, mode=config.byzantine),
            relay=self.relay,
            answered=AnsweredRequests(config.traces_dir),
            retrace_concurrency=config.retrace_concurrency,
            retrace_queue=config.retrace_queue,
        )
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self.binding = load_binding(config, key)
        self.operator = OperatorBinding.open(self.binding).operator
        self.link = CoordinatorLink(
            url=config.coordinator,
            key=key,
            binding=self.binding,
            endpoint=config.advertised_endpoint,
            client=self.http,
            status=self._status,
            heartbeat_interval=config.heartbeat_interval,
            profile=config.profile,
            engines=_engines(config),
            models=_served_models(config),
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _status(self) -> tuple[dict[str, int], list[str]]:
        return self.jobs.load(), self.models.cached()

    async def start(self) -> None:
        if self.config.byzantine is not None:
            log.warning(
                "BYZANTINE node %s: mode %r, it cheats on purpose (tests and demos only)",
                self.key.key_id,
                self.config.byzantine,
            )
        self.models.clean()
        if self.config.coordinator_key is not None:
            self.jobs.coordinator_key = load_public_key(self.config.coordinator_key, kind="ed25519")
        self._tasks.append(asyncio.create_task(self._connect(), name="veriml-node-coordinator"))
        self._tasks.append(asyncio.create_task(self._prune(), name="veriml-node-prune"))

    async def _connect(self) -> None:
        if self.jobs.coordinator_key is None:
            self.jobs.coordinator_key = await self.link.fetch_key()
        await self.link.run()

    async def _prune(self) -> None:
        interval = max(1.0, min(60.0, self.config.trace_retention / 4))
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.traces.prune)

    async def stop(self) -> None:
        """Stop heartbeats, let admitted jobs finish within the grace period, close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.jobs.drain(self.config.shutdown_grace)
        self.jobs.close()
        self.replay.close()
        self.models.close()
        if self.relay is not None:
            self.relay.close()
        await self.http.aclose()

    def info(self) -> dict[str, Any]:
        return {
            "node_id": self.key.key_id,
            "public_key": self.key.public.to_pem().decode(),
            "operator": self.operator,
            "endpoint": self.config.advertised_endpoint,
            "coordinator": self.config.coordinator,
            "descriptor": self.link.descriptor,
            "log_index": self.link.log_index,
        }

    def health(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.jobs.accepting else "stopping",
            "node_id": self.key.key_id,
            "registered": self.link.registered.is_set(),
            "load": self.jobs.load(),
            "completed": self.jobs.completed,
            "cached": self.models.cached(),
            "loaded": self.models.loaded,
            "traces": len(self.traces),
            "retraces": {"active": self.jobs.retraces.active, "queued": self.jobs.retraces.waiting},
            "started_at": format_time(self.started_at),
        }


def _coordinator_only(request: Request, node: NodeState) -> None:
    """Refuse (403, ``check: "access"``) a request not signed (RFC 9421) by the coordinator
    key this node trusts."""
    fields = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    signed = verify_request(request.method, str(request.url), fields)
    trusted = node.jobs.coordinator_key
    if signed is None or trusted is None or signed.key_id != trusted.key_id:
        raise SignatureError(
            "traces are read by the coordinator this node serves, with a signed request",
            check=Check.ACCESS,
        )
    signed.check_body(Digest.of(b""))


def _state(request: Request) -> NodeState:
    state: NodeState = request.app.state.node
    return state


Node = Annotated[NodeState, Depends(_state)]


async def _read_json(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise LimitExceededError("request body is too large", limit=limit, declared=declared[:20])
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise LimitExceededError("request body is too large", limit=limit)
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise FormatError("request body is not JSON", reason=str(exc)[:200]) from exc


NDJSON = "application/x-ndjson"


async def _problem_lines(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The job's NDJSON lines; an error once streaming has begun becomes the last line."""
    try:
        async for line in lines:
            yield line
    except Error as exc:
        status = status_for(exc)
        log.warning("streamed job failed with %d: %s", status, exc)
        body = problem_json(status, exc.diagnostics(), **_evidence(exc))
        yield json.dumps({"error": body}).encode() + b"\n"


_JOB_ANSWERS: Final[Responses] = {
    "200": {
        "description": "the result document (an LLM job: its answer; NDJSON lines on request)",
        "content": {JSON: {"schema": {"type": "object"}}, NDJSON: {"schema": {"type": "string"}}},
    },
    **problems(
        {
            400: "a malformed body",
            403: "a job not signed by this node's coordinator, or not for this node",
            404: "a model the hub does not have",
            409: "a job id seen before (a replay)",
            410: "an expired job",
            413: "a body, or an LLM prompt, over the limit",
            422: "inputs (or an LLM job's request) that do not match the job or the model",
            502: "a model the hub served that does not verify",
            503: "busy or shutting down",
            504: "the job timed out",
        }
    ),
}
_TRACE_ANSWERS: Final[Responses] = problems(
    {
        400: "a malformed trace index",
        403: "not the coordinator's signed request (docs/privacy.md)",
        404: "no such trace (kept)",
    }
)


def _describe_bodies(app: FastAPI) -> None:
    """``/openapi.json`` with the job body described (the route reads raw bytes)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(build(), [JobRequest])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_node_app(config: NodeConfig) -> FastAPI:
    """The node's FastAPI app. Its lifespan loads (or creates) the node key, connects to the
    coordinator (registration and heartbeats in the background) and, on shutdown, stops
    heartbeats and waits up to ``shutdown_grace`` for admitted jobs.

    >>> app = create_node_app(NodeConfig(coordinator_url="http://127.0.0.1:8700",
    ...     key_path=Path("n/node.key"), operator_key=Path("op.key"), home=Path("n")))  # +SKIP
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        key = load_node_key(config.key_path, config.passphrase())
        state = NodeState(config, key)
        app.state.node = state
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(
        title="veriml node",
        version="1",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(Error)
    async def _veriml_error(request: Request, exc: Error) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return problem(status, exc.diagnostics(), **_evidence(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return problem(exc.status_code, str(exc.detail))

    @app.get("/v1/info", operation_id="get_info")
    async def get_info(node: Node) -> dict[str, Any]:
        return node.info()

    @app.post(
        "/v1/jobs",
        operation_id="run_job",
        openapi_extra={
            "requestBody": json_body(JobRequest, "the signed job and its inputs (or request)"),
            "responses": _JOB_ANSWERS,
        },
    )
    async def run_job(request: Request, node: Node) -> Response:
        body = await _read_json(request, config.max_body_bytes)
        if NDJSON in request.headers.get("accept", ""):
            lines = await node.jobs.stream(body)
            return StreamingResponse(_problem_lines(lines), media_type=NDJSON)
        # Already JSON: skips FastAPI's response validation, which costs more than the run.
        return Response(await node.jobs.run(body), media_type="application/json")

    # Trace reads run in the default thread pool, never in a job lane: a dispute's reveals
    # do not wait behind jobs, however busy the node is.
    # Traces hold a request's intermediate tensors: only the coordinator (its signed request,
    # RFC 9421, under the key this node trusts) reads them, for the disputes it referees
    # (docs/privacy.md).
    @app.get("/v1/traces/{request_id}", operation_id="get_trace", responses=_TRACE_ANSWERS)
    async def get_trace(request_id: str, request: Request, node: Node) -> dict[str, Any]:
        _coordinator_only(request, node)
        return await asyncio.to_thread(lambda: node.traces.get(request_id).to_json())

    @app.get(
        "/v1/traces/{request_id}/entries/{index}",
        operation_id="get_trace_entry",
        responses=_TRACE_ANSWERS,
    )
    async def get_trace_entry(
        request_id: str, index: str, request: Request, node: Node
    ) -> dict[str, Any]:
        _coordinator_only(request, node)
        # Parsed here, not by FastAPI: a bad index is a 400 problem like every other.
        if not (index.isascii() and index.isdigit()) or len(index) > 12:
            raise FormatError("trace index must be a non-negative integer", got=index[:40])
        return await asyncio.to_thread(lambda: node.traces.get(request_id).reveal(int(index)))

    @app.get(
        "/v1/traces/{request_id}/tensors/{name:path}",
        operation_id="get_trace_tensor",
        responses=_TRACE_ANSWERS,
    )
    async def get_trace_tensor(
        request_id: str, name: str, request: Request, node: Node
    ) -> dict[str, Any]:
        _coordinator_only(request, node)
        # ``:path``: exported graphs name tensors like "/encoder/MatMul_output_0".
        return await asyncio.to_thread(lambda: node.traces.get(request_id).tensor(name))

    @app.get("/healthz", operation_id="healthz")
    async def healthz(node: Node) -> dict[str, Any]:
        return node.health()

    _describe_bodies(app)
    return app


def serve_node(config: NodeConfig) -> None:
    """Run a node until SIGINT/SIGTERM. Shutdown stops accepting connections, lets requests
    in flight (running jobs) finish within ``shutdown_grace`` seconds, then stops heartbeats."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_node_app(config),
            host=config.host,
            port=config.port,
            log_level="info",
            access_log=config.access_log,
            timeout_graceful_shutdown=int(config.shutdown_grace) or None,
        )
    )
    server.run()
