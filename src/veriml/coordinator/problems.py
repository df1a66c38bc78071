"""RFC 9457 problem details for every error the coordinator answers.

One mapping from the veriml error hierarchy to HTTP statuses, and exception handlers that
turn veriml errors, FastAPI's request validation errors and Starlette's HTTP errors (404 for
unknown routes, 405) into ``application/problem+json``. Evidence members of an error (which
check failed, expected and calculated digests, the member at fault) travel as extension
members of the problem object (RFC 9457 §3.2).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from veriml.core.errors import (
    ConflictError,
    DigestMismatchError,
    Error,
    FormatError,
    InvalidInputError,
    InvalidModelError,
    InvalidTensorError,
    KeyFileError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    PaymentRequiredError,
    ReexecutionMismatchError,
    StorageError,
    VerificationError,
)

__all__ = ["PROBLEM_TYPE", "install_problem_handlers", "problem", "problem_for", "status_for"]

PROBLEM_TYPE = "https://veriml.dev/problems/"
MEDIA_TYPE = "application/problem+json"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def status_for(exc: Error) -> int:
    """The HTTP status for a veriml error (the most specific class wins)."""
    if isinstance(exc, LimitExceededError):
        return 413
    if isinstance(exc, InvalidTensorError | InvalidInputError):
        return 422
    if isinstance(exc, FormatError | InvalidModelError | KeyFileError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, PaymentRequiredError):
        return 402
    if (
        isinstance(exc, DigestMismatchError | ReexecutionMismatchError)
        and exc.check != "file-digest"
    ):
        return 422
    if isinstance(exc, VerificationError):
        return 403
    if isinstance(exc, NodeUnavailableError):
        return 502
    if isinstance(exc, StorageError):
        return 503
    return 500


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | dict):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def problem(
    status: int,
    detail: str,
    /,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **members: Any,
) -> JSONResponse:
    """An ``application/problem+json`` response; ``members`` are extension members, never
    replacing RFC 9457's own (an error's evidence may name a ``status`` or a ``detail`` of
    its own: a node's, say)."""
    title = title or _TITLES.get(status, "Error")
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
    }
    body.update({k: _jsonable(v) for k, v in members.items() if k not in body})
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def problem_for(exc: Error) -> JSONResponse:
    """The problem response for a veriml error, its evidence as members."""
    members = dict(exc.evidence)
    check = getattr(exc, "check", None)
    if check:
        members["check"] = check
    members["error"] = type(exc).__name__
    return problem(status_for(exc), exc.diagnostics(), **members)


def install_problem_handlers(app: FastAPI) -> None:
    """Make every error of ``app`` a problem response."""

    @app.exception_handler(Error)
    async def _veriml_error(request: Request, exc: Error) -> JSONResponse:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()[:20]
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}"
        return problem(422, detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, str(exc.detail), headers=headers)
