"""The wire around LLM answers: OpenAI error objects as veriml errors, the request as sent,
server-sent events, streamed tool calls and text completions rebuilt for verification."""

from __future__ import annotations

import json
from typing import Any

import pytest

from veriml.client._chat import (
    LLMRequest,
    StreamAssembler,
    canonical_policy,
    llm_request,
    openai_error,
)
from veriml.core.errors import (
    FormatError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    VerificationError,
)
from veriml.protocol.sse import parse_sse


def _error(message: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}
    }


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, _error("model not found", "model_not_found", "model"), NotFoundError),
        (400, _error("too long", "context_length_exceeded", "messages"), LimitExceededError),
        (400, _error("bad temperature", None, "temperature"), FormatError),
        (503, _error("no node"), NodeUnavailableError),
        (502, "not json at all", NodeUnavailableError),
    ],
)
def test_openai_error_objects_become_the_veriml_error_they_stand_for(
    status: int, body: object, kind: type[Exception]
) -> None:
    error = openai_error(status, body, "http://c/v1/chat/completions")
    assert type(error) is kind
    assert error.evidence["status"] == status


def test_an_error_keeps_the_parameter_it_names() -> None:
    error = openai_error(400, _error("bad top_p", None, "top_p"), "http://c")
    assert error.evidence["param"] == "top_p"
    assert "bad top_p" in error.diagnostics()


def test_the_request_body_is_openais_own_and_the_policy_travels_in_a_header() -> None:
    request = llm_request(
        "chat.completion",
        "smollm2",
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"temperature": 0, "max_tokens": 8, "seed": None},
        "quorum:3/2,bitwise",
        None,
    )
    body = json.loads(request.content())
    assert body == {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "max_tokens": 8,
    }
    headers = request.headers()
    assert headers["X-Veriml-Policy"] == "quorum:3/2"  # canonical text
    assert headers["Idempotency-Key"] == request.request_id
    assert request.path == "/v1/chat/completions"


@pytest.mark.parametrize("member", ["model", "messages", "veriml"])
def test_parameters_cannot_override_a_request_member(member: str) -> None:
    with pytest.raises(FormatError):
        llm_request("chat.completion", "m", {"messages": []}, {member: "x"}, "none", None)


def test_a_malformed_policy_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(FormatError):
        canonical_policy("most:3")
    assert canonical_policy("prefill") == "prefill"


def test_sse_events_with_types_comments_and_multiline_data() -> None:
    lines = [": keep-alive", 'data: {"a":', "data: 1}", "", "event: veriml", "data: {}", ""]
    assert list(parse_sse(lines)) == [("", '{"a":\n1}'), ("veriml", "{}")]


def _feed(assembler: StreamAssembler, *events: tuple[str, Any]) -> str:
    shown = ""
    for event, data in events:
        shown += assembler.feed(event, data if isinstance(data, str) else json.dumps(data))
    return shown


def test_a_streamed_tool_call_is_rebuilt_from_its_pieces() -> None:
    assembler = StreamAssembler("chat.completion")
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get"}}
    more = {"index": 0, "function": {"arguments": '{"city": '}}
    rest = {"index": 0, "function": {"arguments": '"Paris"}'}}
    shown = _feed(
        assembler,
        ("", {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}),
        ("", {"choices": [{"index": 0, "delta": {"tool_calls": [more]}}]}),
        ("", {"choices": [{"index": 0, "delta": {"tool_calls": [rest]}}]}),
        ("", {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ("veriml", {"id": "r"}),
        ("", "[DONE]"),
    )
    assert shown == ""
    message = assembler.body()["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get", "arguments": '{"city": "Paris"}'},
        }
    ]


def test_a_streamed_text_completion_is_rebuilt_as_its_choice_text() -> None:
    assembler = StreamAssembler("text_completion")
    shown = _feed(
        assembler,
        ("", {"choices": [{"index": 0, "text": "Once"}]}),
        ("", {"choices": [{"index": 0, "text": " upon", "finish_reason": "length"}]}),
        ("veriml", {"id": "r"}),
        ("", "[DONE]"),
    )
    assert shown == "Once upon"
    assert assembler.body()["choices"][0] == {
        "index": 0,
        "text": "Once upon",
        "finish_reason": "length",
    }


@pytest.mark.parametrize(
    "events",
    [
        [("", "[DONE]"), ("", {"choices": []})],
        [("veriml", {}), ("veriml", {})],
        [("", {"choices": [{"index": 1, "delta": {"content": "x"}}]})],
        [("ping", {})],
    ],
    ids=["after-done", "two-veriml", "second-choice", "unknown-event"],
)
def test_a_stream_that_breaks_the_format_is_refused(events: list[tuple[str, Any]]) -> None:
    with pytest.raises(FormatError):
        _feed(StreamAssembler("chat.completion"), *events)


def test_a_stream_without_a_finish_reason_has_nothing_to_verify() -> None:
    assembler = StreamAssembler("chat.completion")
    _feed(
        assembler,
        ("", {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}),
        ("veriml", {"id": "r"}),
        ("", "[DONE]"),
    )
    with pytest.raises(VerificationError) as caught:
        assembler.body()
    assert caught.value.check == "stream"


def test_the_request_records_its_kind_path() -> None:
    request = LLMRequest("embedding", {"model": "m", "input": ["a"]}, "none", "id-1")
    assert request.path == "/v1/embeddings"
    assert request.model == "m"
