"""HTTP serving of a log: the C2SP tlog-tiles read API, proof endpoints and ``POST add``.

Routes, relative to any prefix the router is mounted under:

=========================================  =================================================
``GET checkpoint``                         signed note, ``text/plain; charset=utf-8``, not
                                           cached (https://c2sp.org/tlog-tiles#checkpoints)
``GET tile/<L>/<N>[.p/<W>]``               hash tile (https://c2sp.org/tlog-tiles#merkle-tree)
``GET tile/entries/<N>[.p/<W>]``           entry bundle (https://c2sp.org/tlog-tiles#log-entries)
``GET proof/inclusion?index=N&size=M``     RFC 9162 §2.1.3 proof, JSON with base64 hashes
``GET proof/inclusion?hash=HEX&size=M``    the same, finding the entry by its leaf hash
``GET proof/consistency?old=A&new=B``      RFC 9162 §2.1.4 proof, JSON with base64 hashes
``POST add``                               body = one raw entry → ``{"index": N}`` once durable
=========================================  =================================================

Full tiles never change and are cached for a year (``immutable``); a partial tile's bytes never
change either, but a log may drop it once the full tile exists, so it gets a short max-age.
Proofs between fixed sizes are cacheable for a day. The standalone app gzips responses (entry
bundles above all) for clients that accept it.
Everything served is bounded by the published checkpoint. Errors are RFC 9457 problem details
(``application/problem+json``): 400 bad input, 404 beyond the tree, 413 oversize entry, 503
storage failure.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from veriml.core.errors import Error, FormatError, NotFoundError, StorageError, VerificationError
from veriml.tlog.log import Log
from veriml.tlog.merkle import MAX_SIZE
from veriml.tlog.storage import MAX_ENTRY_SIZE
from veriml.tlog.tiles import TilePath

__all__ = ["create_log_app", "create_log_router", "problem"]

FULL_TILE_CACHE = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE = "public, max-age=60"
CHECKPOINT_CACHE = "no-cache"
# A proof between fixed sizes never changes (and by hash, the lowest index below a size is fixed).
PROOF_CACHE = "public, max-age=86400"
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_HEX_HASH = re.compile(r"[0-9a-fA-F]{64}")
_PROBLEM_TYPE = "https://veriml.dev/problems/"

# The OpenAPI declarations of the routes: what each answers, and the query parameters the
# proof routes read themselves (to answer a problem, not FastAPI's 422, for a bad one).
_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def _problems(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    content = {"application/problem+json": {"schema": _PROBLEM_SCHEMA}}
    return {status: {"description": text, "content": content} for status, text in statuses.items()}


def _query(name: str, description: str, *, required: bool = True, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema or {"type": "integer", "minimum": 0, "maximum": MAX_SIZE - 1},
    }


_PROOF = {
    200: {"content": {"application/json": {"schema": {"type": "object"}}}},
    **_problems({400: "a malformed parameter", 404: "beyond the published tree"}),
}
_SIZE = _query("size", "the tree size the proof is for")


def problem(status: int, title: str, detail: str) -> JSONResponse:
    """An RFC 9457 problem details response."""
    return JSONResponse(
        {
            "type": _PROBLEM_TYPE + title.lower().replace(" ", "-"),
            "title": title,
            "status": status,
            "detail": detail,
        },
        status_code=status,
        media_type="application/problem+json",
    )


def _problem_for(exc: Error) -> JSONResponse:
    if isinstance(exc, NotFoundError):
        return problem(404, "Not Found", exc.diagnostics())
    if isinstance(exc, FormatError | VerificationError):
        return problem(400, "Bad Request", exc.diagnostics())
    if isinstance(exc, StorageError):
        return problem(503, "Storage Unavailable", exc.diagnostics())
    return problem(500, "Internal Error", exc.diagnostics())


class _ProblemRoute(APIRoute):
    """Turns veriml errors into problem responses on the router itself, so they look the
    same wherever the router is mounted (exception handlers belong to the app)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Error as exc:
                return _problem_for(exc)

        return handle


def _int_param(request: Request, name: str) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        raise FormatError("missing query parameter", parameter=name)
    if not _DECIMAL.fullmatch(raw) or int(raw) >= MAX_SIZE:
        raise FormatError("query parameter must be a decimal below 2**63", parameter=name)
    return int(raw)


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooLargeError(declared)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _TooLargeError(f"more than {limit}")
    return bytes(body)


class _TooLargeError(Exception):
    pass


def create_log_router(log: Log, *, allow_add: bool = False) -> APIRouter:
    """The log's HTTP API as a router; mount it under any prefix with ``include_router``.

    ``allow_add`` exposes ``POST add``, for standalone logs; an application that decides what
    goes in the log (such as the coordinator) leaves it off and calls :meth:`Log.add` itself.
    """
    router = APIRouter(route_class=_ProblemRoute)

    @router.get(
        "/checkpoint",
        operation_id="log_checkpoint",
        response_class=Response,
        responses={
            200: {
                "description": "the signed checkpoint (C2SP tlog-checkpoint)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **_problems({503: "the log is not open"}),
        },
    )
    def checkpoint() -> Response:
        return Response(
            log.checkpoint(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": CHECKPOINT_CACHE},
        )

    @router.get(
        "/tile/{rest:path}",
        operation_id="log_tile",
        response_class=Response,
        responses={
            200: {
                "description": "a hash tile or an entry bundle (C2SP tlog-tiles)",
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
                },
            },
            **_problems({400: "not a tile path", 404: "beyond the published tree"}),
        },
    )
    def tile(rest: str) -> Response:
        path = TilePath.from_path("tile/" + rest)
        data = log.read_tile(path)
        full = path.width == 256
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Cache-Control": FULL_TILE_CACHE if full else PARTIAL_TILE_CACHE},
        )

    @router.get(
        "/proof/inclusion",
        operation_id="log_inclusion_proof",
        responses=_PROOF,
        openapi_extra={
            "parameters": [
                _SIZE,
                _query("index", "the entry's index (or give hash)", required=False),
                _query(
                    "hash",
                    "the entry's RFC 9162 leaf hash, hex (or give index)",
                    required=False,
                    type="string",
                    pattern="^[0-9a-fA-F]{64}$",
                ),
            ]
        },
    )
    def inclusion(request: Request) -> JSONResponse:
        size = _int_param(request, "size")
        limit = log.published_size
        leaf = request.query_params.get("hash")
        if leaf is not None:
            if "index" in request.query_params:
                raise FormatError("give index or hash, not both")
            if not _HEX_HASH.fullmatch(leaf):
                raise FormatError("hash must be 64 hex digits", parameter="hash")
            index, proof = log.inclusion_proof_by_hash(bytes.fromhex(leaf), size, limit=limit)
        else:
            index = _int_param(request, "index")
            proof = log.inclusion_proof(index, size, limit=limit)
        return JSONResponse(
            {"index": index, "size": size, "proof": _b64(proof)},
            headers={"Cache-Control": PROOF_CACHE},
        )

    @router.get(
        "/proof/consistency",
        operation_id="log_consistency_proof",
        responses=_PROOF,
        openapi_extra={
            "parameters": [
                _query("old", "the smaller tree size"),
                _query("new", "the larger tree size"),
            ]
        },
    )
    def consistency(request: Request) -> JSONResponse:
        old = _int_param(request, "old")
        new = _int_param(request, "new")
        proof = log.consistency_proof(old, new, limit=log.published_size)
        return JSONResponse(
            {"old": old, "new": new, "proof": _b64(proof)}, headers={"Cache-Control": PROOF_CACHE}
        )

    if allow_add:

        @router.post(
            "/add",
            operation_id="log_add",
            responses={
                200: {"content": {"application/json": {"schema": {"type": "object"}}}},
                **_problems({413: f"an entry over {MAX_ENTRY_SIZE} bytes"}),
            },
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "description": "one raw entry, as it is to be logged",
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                }
            },
        )
        async def add(request: Request) -> Response:
            try:
                entry = await _read_bounded(request, MAX_ENTRY_SIZE)
            except _TooLargeError as exc:
                return problem(
                    413,
                    "Content Too Large",
                    f"an entry is at most {MAX_ENTRY_SIZE} bytes (got {exc})",
                )
            index = await log.add_async(entry)
            return JSONResponse({"index": index})

    return router


def create_log_app(log: Log, *, allow_add: bool = True, prefix: str = "") -> FastAPI:
    """A standalone app serving ``log`` under ``prefix``; every error is problem JSON."""
    app = FastAPI(title=f"veriml log {log.origin}", docs_url=None, redoc_url=None)
    app.include_router(create_log_router(log, allow_add=allow_add), prefix=prefix)
    # tlog-tiles: entry bundles SHOULD be compressed at the HTTP layer (when clients accept it).
    app.add_middleware(GZipMiddleware, minimum_size=1024)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        return problem(exc.status_code, title, str(exc.detail))

    return app
