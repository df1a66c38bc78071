"""OpenAI error objects for the OpenAI-compatible routes (docs/openai-api.md, "Errors").

The rest of the coordinator answers RFC 9457 problem JSON; ``/v1/chat/completions``,
``/v1/completions`` and ``/v1/embeddings`` answer what OpenAI's clients parse instead::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "temperature",
               "code": null}}

One pure mapping, :func:`openai_error`, turns a veriml error into a status and that object::

    error                                           status  type / code
    NotFoundError (the model)                       404     invalid_request_error /
                                                            model_not_found
    LimitExceededError on the prompt, or a node's
      413 (prompt + max_tokens over context)        400     invalid_request_error /
                                                            context_length_exceeded
    LimitExceededError on max_tokens                400     invalid_request_error /
                                                            max_tokens_exceeded
    LimitExceededError (request body)               413     invalid_request_error /
                                                            request_too_large
    other FormatError, InvalidInputError, or a node
      refusing a named request member               400     invalid_request_error / (none)
    SignatureError (a signed request)               403     permission_error / invalid_signature
    ConflictError                                   409     invalid_request_error / conflict
    PaymentRequiredError (fees, no signed payment)  402     insufficient_quota / payment_required
    NodeUnavailableError                            503     service_unavailable_error /
                                                            no_nodes_available
    a node refusing the job for its own reasons     502     upstream_error / node_refused
    other VerificationError                         502     upstream_error / verification_failed
    anything else                                   500     server_error / (none)

``param`` is the request member at fault when the error's evidence names it (``param=``).
A node that refuses a job for a client error (its prompt does not fit the context, say) is
reported as that client error: the evidence the node sent back (``param``, ``code``) travels
in :class:`NodeRefusedError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from veriml.coordinator.nodes.dispatch import JobRejectedError
from veriml.core.errors import (
    ConflictError,
    Error,
    FormatError,
    InvalidInputError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    PaymentRequiredError,
    SignatureError,
    VerificationError,
)

__all__ = ["NodeRefusedError", "OpenAIError", "openai_error"]

OpenAIError = tuple[int, dict[str, Any]]
"""A status and the ``{"error": {...}}`` body."""

PROMPT_PARAMS: Final = frozenset({"messages", "prompt", "input"})
_MAX_MESSAGE: Final = 1000


class NodeRefusedError(JobRejectedError):
    """A node refused a completion job with a 4xx problem; ``problem`` is its problem JSON
    (``param`` and ``error`` members say which request member it refused, and why)."""

    def __init__(self, message: str, *, node: str, status: int, problem: Mapping[str, Any]):
        detail = problem.get("detail")
        super().__init__(
            message,
            node=node,
            status=status,
            detail=str(detail)[:300] if detail is not None else "",
        )
        self.problem = dict(problem)


def _body(message: str, kind: str, param: object, code: object) -> dict[str, Any]:
    return {
        "error": {
            "message": message[:_MAX_MESSAGE],
            "type": kind,
            "param": param if isinstance(param, str) else None,
            "code": code if isinstance(code, str) else None,
        }
    }


def _limit_code(param: object) -> str:
    if param in PROMPT_PARAMS:
        return "context_length_exceeded"
    if param == "max_tokens":
        return "max_tokens_exceeded"
    return "request_too_large"


def _refused(exc: NodeRefusedError) -> OpenAIError:
    """A node's 4xx refusal: a client error when the node says which member is at fault,
    otherwise the coordinator's upstream failed (502)."""
    problem = exc.problem
    param, error, detail = problem.get("param"), problem.get("error"), exc.detail
    message = f"{detail} (node {exc.node})" if detail else f"node {exc.node} refused the job"
    if error == "LimitExceededError" or exc.status == 413:
        # Prompt and max_tokens together do not fit the node's context: OpenAI's
        # context_length_exceeded, whichever member the node names.
        code = problem.get("code") or "context_length_exceeded"
        return 400, _body(message, "invalid_request_error", param, code)
    if error in ("FormatError", "InvalidInputError", "InvalidModelError") or isinstance(param, str):
        return 400, _body(message, "invalid_request_error", param, problem.get("code"))
    return 502, _body(message, "upstream_error", None, "node_refused")


def openai_error(exc: Error) -> OpenAIError:
    """The status and OpenAI error body for ``exc`` (the table in the module docstring)."""
    param = exc.evidence.get("param")
    message = exc.diagnostics()
    if isinstance(exc, NodeRefusedError):
        return _refused(exc)
    if isinstance(exc, NotFoundError):
        return 404, _body(message, "invalid_request_error", param or "model", "model_not_found")
    if isinstance(exc, LimitExceededError):
        code = _limit_code(param)
        status = 413 if code == "request_too_large" else 400
        return status, _body(message, "invalid_request_error", param, code)
    if isinstance(exc, FormatError | InvalidInputError):
        return 400, _body(message, "invalid_request_error", param, exc.evidence.get("code"))
    if isinstance(exc, SignatureError):
        return 403, _body(message, "permission_error", None, "invalid_signature")
    if isinstance(exc, ConflictError):
        return 409, _body(message, "invalid_request_error", param, "conflict")
    if isinstance(exc, PaymentRequiredError):
        return 402, _body(message, "insufficient_quota", None, "payment_required")
    if isinstance(exc, NodeUnavailableError):
        return 503, _body(message, "service_unavailable_error", None, "no_nodes_available")
    if isinstance(exc, JobRejectedError):
        return 502, _body(message, "upstream_error", None, "node_refused")
    if isinstance(exc, VerificationError):
        return 502, _body(message, "upstream_error", None, "verification_failed")
    return 500, _body(message, "server_error", None, None)
