"""veriml errors become the OpenAI error objects OpenAI's clients parse, with the right status."""

from __future__ import annotations

import pytest

from veriml.coordinator.llm.errors import NodeRefusedError, openai_error
from veriml.coordinator.nodes.dispatch import JobRejectedError
from veriml.core.errors import (
    ConflictError,
    Error,
    FormatError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    SignatureError,
    VerificationError,
)


def _refused(status: int, **problem: object) -> NodeRefusedError:
    return NodeRefusedError("node refused the job", node="n1", status=status, problem=problem)


@pytest.mark.parametrize(
    ("error", "status", "kind", "param", "code"),
    [
        (NotFoundError("no such model", model="nope"), 404, "invalid_request_error", "model",
         "model_not_found"),
        (FormatError("temperature must be >= 0", param="temperature"), 400,
         "invalid_request_error", "temperature", None),
        (FormatError("not JSON"), 400, "invalid_request_error", None, None),
        (LimitExceededError("prompt too long", param="messages"), 400, "invalid_request_error",
         "messages", "context_length_exceeded"),
        (LimitExceededError("too many tokens", param="max_tokens"), 400, "invalid_request_error",
         "max_tokens", "max_tokens_exceeded"),
        (LimitExceededError("body too large", limit=10), 413, "invalid_request_error", None,
         "request_too_large"),
        (SignatureError("bad", check="request-signature"), 403, "permission_error", None,
         "invalid_signature"),
        (ConflictError("balance too low"), 409, "invalid_request_error", None, "conflict"),
        (NodeUnavailableError("no nodes"), 503, "service_unavailable_error", None,
         "no_nodes_available"),
        (VerificationError("bad receipt", check="output"), 502, "upstream_error", None,
         "verification_failed"),
        (JobRejectedError("refused", node="n", status=403, detail="replay"), 502, "upstream_error",
         None, "node_refused"),
        (Error("boom"), 500, "server_error", None, None),
    ],
)  # fmt: skip
def test_each_error_has_its_status_type_param_and_code(
    error: Error, status: int, kind: str, param: str | None, code: str | None
) -> None:
    got_status, body = openai_error(error)
    assert got_status == status
    assert set(body) == {"error"}
    assert body["error"] == {
        "message": error.diagnostics(),
        "type": kind,
        "param": param,
        "code": code,
    }


def test_a_node_refusing_an_overlong_prompt_is_the_clients_context_overflow() -> None:
    refusal = _refused(
        413, error="LimitExceededError", param="messages", detail="prompt: 3000 > 2048"
    )
    status, body = openai_error(refusal)
    assert status == 400
    assert body["error"]["code"] == "context_length_exceeded"
    assert body["error"]["param"] == "messages"
    assert "3000 > 2048" in body["error"]["message"]


def test_a_node_whose_context_cannot_hold_prompt_and_max_tokens_is_context_overflow() -> None:
    refusal = _refused(413, param="max_tokens", detail="prompt plus max_tokens exceeds the context")
    status, body = openai_error(refusal)
    assert (status, body["error"]["code"], body["error"]["param"]) == (
        400,
        "context_length_exceeded",
        "max_tokens",
    )


def test_a_node_refusing_a_parameter_names_it() -> None:
    status, body = openai_error(_refused(400, error="FormatError", param="top_p", detail="bad"))
    assert (status, body["error"]["param"], body["error"]["type"]) == (
        400,
        "top_p",
        "invalid_request_error",
    )


def test_a_node_refusing_a_job_for_its_own_reasons_is_an_upstream_failure() -> None:
    status, body = openai_error(_refused(403, error="SignatureError", detail="replayed job"))
    assert status == 502
    assert body["error"]["code"] == "node_refused"


def test_messages_are_bounded() -> None:
    _, body = openai_error(FormatError("x" * 5000))
    assert len(body["error"]["message"]) == 1000
