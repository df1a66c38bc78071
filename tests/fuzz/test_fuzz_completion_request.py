"""The OpenAI request canonicaliser: any body is made canonical or refused with a FormatError
naming the parameter, and a canonical request is a fixed point (a node receiving it computes
the same request and so the same digest)."""

from __future__ import annotations

from typing import Any

from _fuzzing import attempt, dumps, fuzz_settings, json_values, mutated_json
from hypothesis import example, given
from hypothesis import strategies as st

from veriml.core.canonical import canonical_digest, parse_json_object
from veriml.core.completion import RequestKind
from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.protocol.openai_requests import canonical_request, check_canonical

MODEL = Digest.of(b"fuzz model")
CHAT: dict[str, Any] = {
    "model": "smollm2",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "u"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "f"}},
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "max_tokens": 16,
    "seed": 7,
    "stop": ["\n", "END"],
    "stream": True,
    "stream_options": {"include_usage": True},
    "response_format": {"type": "text"},
    "presence_penalty": 0,
    "n": 1,
    "user": "someone",
}
TEXT: dict[str, Any] = {
    "model": "smollm2",
    "prompt": ["Once upon"],
    "max_completion_tokens": 8,
    "temperature": 0,
    "stop": "\n",
    "echo": False,
    "best_of": 1,
    "logprobs": None,
}
EMBEDDING: dict[str, Any] = {"model": "e5", "input": ["a", "b"], "encoding_format": "float"}
BODIES: list[tuple[RequestKind, dict[str, Any]]] = [
    ("chat.completion", CHAT),
    ("text_completion", TEXT),
    ("embedding", EMBEDDING),
]

cases = st.one_of(
    st.tuples(
        st.sampled_from(["chat.completion", "text_completion", "embedding"]),
        mutated_json([body for _, body in BODIES]).map(lambda t: t[0]),
    ),
    st.tuples(
        st.sampled_from(["chat.completion", "text_completion", "embedding"]),
        st.dictionaries(st.sampled_from(sorted({*CHAT, *TEXT, *EMBEDDING})), json_values),
    ),
)


@fuzz_settings()
@given(cases, st.none() | st.integers(0, 2**53), st.none() | st.integers(0, 300))
# Found by this target: math.isfinite() of an integer beyond every double (OverflowError), and
# a role that is a list looked up in a frozenset (TypeError).
@example(("text_completion", {"prompt": "x", "temperature": 10**400}), 7, None)
@example(("chat.completion", {"messages": [{"role": ["user"], "content": "x"}]}), 7, None)
def test_a_request_is_made_canonical_as_a_fixed_point_or_refused(
    case: tuple[RequestKind, Any], seed: int | None, max_context: int | None
) -> None:
    kind, body = case
    # The coordinator reads the body as strict JSON first; so does the fuzz target.
    data = dumps(body)
    size = len(data)

    def canonical() -> dict[str, Any]:
        parsed = parse_json_object(data, what="request body")
        return canonical_request(kind, MODEL, parsed, seed=seed, max_context=max_context)

    request, error = attempt(canonical, allowed=(FormatError,), size=size)
    if error is not None:
        return
    assert request is not None
    assert request["type"] == kind
    assert request["model"] == MODEL.to_text()
    again, _ = attempt(lambda: check_canonical(request), allowed=(), size=size)
    assert again == request
    digest, _ = attempt(lambda: canonical_digest(request), allowed=(FormatError,), size=size)
    if digest is not None:
        assert canonical_digest(again) == digest


@fuzz_settings()
@given(
    st.one_of(
        mutated_json([canonical_request(kind, MODEL, body, seed=7) for kind, body in BODIES]).map(
            lambda t: t[0]
        ),
        st.dictionaries(st.sampled_from(["type", "model", "seed", "messages"]), json_values),
    )
)
@example({"type": "chat.completion", "model": MODEL.to_text(), "messages": [{"role": []}]})
def test_a_request_a_node_receives_is_canonical_or_refused(request: Any) -> None:
    if not isinstance(request, dict):
        return
    checked, _ = attempt(
        lambda: check_canonical(request), allowed=(FormatError,), size=len(dumps(request))
    )
    if checked is not None:
        assert checked == request
