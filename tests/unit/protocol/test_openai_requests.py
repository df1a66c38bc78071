"""Canonical LLM requests, output digests and completion receipts (docs/llm.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest, Envelope, Statement, Subject, generate_key
from veriml.core.canonical import canonical_digest, canonicalize, parse_json_object
from veriml.core.completion import (
    COMPLETION_PREDICATE_TYPE,
    CompletionPredicate,
    Sampling,
    completion_output_digest,
    embedding_output_digest,
    open_completion,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.errors import FormatError, LimitExceededError, SignatureError, VerificationError
from veriml.core.tensors import tensor_digest
from veriml.protocol.openai_requests import DEFAULT_MAX_TOKENS, canonical_request, check_canonical

MODEL = Digest.of(b"model")
CHAT = {"messages": [{"role": "user", "content": "Hi"}]}


def chat(**body: Any) -> dict[str, Any]:
    return canonical_request("chat.completion", MODEL, {**CHAT, **body}, seed=7)


def test_chat_defaults_are_filled_and_transport_members_dropped() -> None:
    out = canonical_request(
        "chat.completion",
        MODEL,
        {**CHAT, "model": "smollm2", "stream": True, "user": "u", "n": 1, "veriml": {}},
        seed=7,
    )
    assert out == {
        "type": "chat.completion",
        "model": MODEL.to_text(),
        "messages": [{"role": "user", "content": "Hi"}],
        "tools": None,
        "tool_choice": None,
        "response_format": {"type": "text"},
        "seed": 7,
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stop": [],
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "logit_bias": {},
    }


def test_request_seed_wins_over_the_nodes_choice() -> None:
    assert chat(seed=3)["seed"] == 3
    assert chat()["seed"] == 7


def test_missing_seed_everywhere_gets_a_random_one_that_is_recorded() -> None:
    a = canonical_request("chat.completion", MODEL, CHAT)
    b = canonical_request("chat.completion", MODEL, CHAT)
    assert isinstance(a["seed"], int)
    assert a["seed"] != b["seed"]


def test_same_question_written_differently_has_one_digest() -> None:
    a = chat(stop="x", temperature=0, max_completion_tokens=5)
    b = chat(stop=["x"], temperature=0.0, max_tokens=5, stream=False)
    assert canonical_digest(a) == canonical_digest(b)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "audio": 1}]}, "messages[0].audio"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({**CHAT, "temperature": 2.5}, "temperature"),
        ({**CHAT, "temperature": -0.1}, "temperature"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "top_p": 0}, "top_p"),
        ({**CHAT, "top_p": 1.5}, "top_p"),
        ({**CHAT, "top_k": -1}, "top_k"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_tokens": 2, "max_completion_tokens": 3}, "max_completion_tokens"),
        ({**CHAT, "n": 2}, "n"),
        ({**CHAT, "presence_penalty": 0.5}, "presence_penalty"),
        ({**CHAT, "frequency_penalty": 1}, "frequency_penalty"),
        ({**CHAT, "logit_bias": {"1": 5}}, "logit_bias"),
        ({**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
        ({**CHAT, "logprobs": True}, "logprobs"),
        ({**CHAT, "seed": -1}, "seed"),
        ({**CHAT, "seed": 2**53}, "seed"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**CHAT, "stop": [""]}, "stop"),
        ({**CHAT, "frobnicate": 1}, "frobnicate"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools[0]"),
        ({**CHAT, "tool_choice": "sometimes"}, "tool_choice"),
        (
            {**CHAT, "tool_choice": {"type": "function", "function": {"name": "absent"}}},
            "tool_choice",
        ),
    ],
)
def test_invalid_chat_requests_name_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(FormatError) as info:
        canonical_request("chat.completion", MODEL, body, seed=1)
    assert info.value.evidence["param"] == param


def test_max_tokens_over_the_context_is_a_limit() -> None:
    with pytest.raises(LimitExceededError) as info:
        canonical_request("chat.completion", MODEL, {**CHAT, "max_tokens": 9000}, max_context=2048)
    assert info.value.evidence["param"] == "max_tokens"
    assert info.value.evidence["limit"] == 2048


def test_default_max_tokens_fits_a_small_context() -> None:
    out = canonical_request("text_completion", MODEL, {"prompt": "x"}, seed=1, max_context=64)
    assert out["max_tokens"] == 64


def test_tools_are_validated_and_kept() -> None:
    tool = {
        "type": "function",
        "function": {"name": "weather", "description": "d", "parameters": {"type": "object"}},
    }
    out = chat(tools=[tool], tool_choice={"type": "function", "function": {"name": "weather"}})
    assert out["tools"] == [tool]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "weather"}}


def test_assistant_tool_calls_may_have_null_content() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    out = canonical_request("chat.completion", MODEL, {"messages": messages}, seed=1)
    assert out["messages"][1] == {"role": "assistant", "tool_calls": [call], "content": None}


def test_text_completion_and_embedding_forms() -> None:
    text = canonical_request("text_completion", MODEL, {"prompt": ["Once"], "echo": False}, seed=1)
    assert text["prompt"] == "Once"
    assert "messages" not in text
    emb = canonical_request("embedding", MODEL, {"input": "a", "encoding_format": "base64"})
    assert emb == {"type": "embedding", "model": MODEL.to_text(), "input": ["a"]}
    for body, param in (({"input": []}, "input"), ({"input": "a", "dimensions": 8}, "dimensions")):
        with pytest.raises(FormatError) as info:
            canonical_request("embedding", MODEL, body)
        assert info.value.evidence["param"] == param
    with pytest.raises(FormatError) as info:
        canonical_request("text_completion", MODEL, {"prompt": "x", "echo": True})
    assert info.value.evidence["param"] == "echo"


@given(
    temperature=st.floats(0, 2),
    top_p=st.floats(0, 1, exclude_min=True),
    top_k=st.integers(0, 100),
    seed=st.integers(0, 2**53 - 1),
    stop=st.lists(st.text(min_size=1, max_size=5), max_size=4),
)
def test_canonical_requests_are_fixed_points(
    temperature: float, top_p: float, top_k: int, seed: int, stop: list[str]
) -> None:
    out = chat(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=stop)
    assert check_canonical(out) == out
    # Every accepted seed survives RFC 8785 (exact only below 2**53) into the request digest.
    assert parse_json_object(canonicalize(out))["seed"] == seed
    assert sampling_of(out) == Sampling(temperature, top_p, top_k, seed)


def test_check_canonical_refuses_a_non_canonical_request() -> None:
    out = chat()
    with pytest.raises(FormatError):
        check_canonical({**out, "stream": True})
    del out["top_k"]
    with pytest.raises(FormatError):
        check_canonical(out)


def test_output_digests_follow_the_documented_json() -> None:
    digest = completion_output_digest(
        content="Paris", tool_calls=[], tokens=[5, 6, 2], finish_reason="stop"
    )
    assert digest == canonical_digest(
        {"content": "Paris", "tool_calls": [], "tokens": [5, 6, 2], "finish_reason": "stop"}
    )
    assert token_digest([1, 2]) == Digest.of(b"[1,2]")
    vectors = [np.ones(3, np.float32), np.zeros(3, np.float32)]
    assert embedding_output_digest(vectors) == canonical_digest(
        {"embeddings": [tensor_digest(v).to_text() for v in vectors]}
    )


def _predicate(**overrides: Any) -> CompletionPredicate:
    fields: dict[str, Any] = {
        "request_id": "r-1",
        "request_digest": canonical_digest(chat()),
        "model_digest": MODEL,
        "model_files": Digest.of(b"files"),
        "prompt_count": 12,
        "prompt_digest": token_digest(range(12)),
        "completion_count": 3,
        "finish_reason": "stop",
        "sampling": Sampling(0.0, 1.0, 0, 7),
        "runtime": {"engine": "llama.cpp", "n_threads": 1},
        "node_id": "node",
        "policy": "none",
        "trust": "reexecutable",
        "started": "2026-01-01T00:00:00.000000Z",
        "finished": "2026-01-01T00:00:01.000000Z",
    }
    fields.update(overrides)
    return CompletionPredicate(**fields)


def test_predicate_round_trips_in_the_documented_shape() -> None:
    commitment = Digest.of(b"secret commitment")
    predicate = _predicate(spot=commitment, extra={"later": {"member": "x"}})
    obj = predicate.to_json()
    assert obj["spot"] == {"commitment": commitment.to_text()}
    assert obj["later"] == {"member": "x"}  # members a later version adds are kept
    assert obj["model"] == {"digest": MODEL.to_text(), "files": Digest.of(b"files").to_text()}
    assert obj["prompt"] == {"count": 12, "digest": token_digest(range(12)).to_text()}
    assert obj["completion"] == {"count": 3, "finish_reason": "stop"}
    assert obj["sampling"] == {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "seed": 7}
    assert obj["trust"] == "reexecutable"
    assert CompletionPredicate.from_json(obj) == predicate


def test_relay_predicate_names_its_upstream_and_no_digest() -> None:
    upstream = {"upstream": "https://api.example/v1", "name": "gpt-x"}
    relay = _predicate(
        trust="attested-relay", model_digest=None, model_files=None, upstream=upstream
    )
    assert relay.to_json()["model"] == upstream
    assert CompletionPredicate.from_json(relay.to_json()) == relay
    with pytest.raises(FormatError):
        _predicate(trust="attested-relay", upstream=upstream)
    with pytest.raises(FormatError):
        _predicate(model_digest=None, model_files=None)


def test_sign_and_open_a_completion_receipt() -> None:
    key = generate_key()
    output = completion_output_digest(content="a", tool_calls=[], tokens=[1], finish_reason="stop")
    envelope = sign_completion(output, _predicate(), key)
    predicate, digest = open_completion(envelope, key.public)
    assert (predicate, digest) == (_predicate(), output)
    statement = Statement.from_bytes(envelope.payload)
    assert statement.predicate_type == COMPLETION_PREDICATE_TYPE
    assert [s.name for s in statement.subjects] == ["completion"]


def test_open_completion_fails_closed() -> None:
    key, other = generate_key(), generate_key()
    output = Digest.of(b"out")
    envelope = sign_completion(output, _predicate(), key)
    with pytest.raises(SignatureError):
        open_completion(envelope, other.public)
    wrong_type = Statement(
        subjects=(), predicate_type="https://veriml.dev/inference/v1", predicate={}
    )
    with pytest.raises(VerificationError) as info:
        open_completion(Envelope.sign(wrong_type.to_bytes(), [key]), key.public)
    assert info.value.check == "predicate-type"
    no_subject = Statement(
        subjects=(), predicate_type=COMPLETION_PREDICATE_TYPE, predicate=_predicate().to_json()
    )
    with pytest.raises(VerificationError) as info:
        open_completion(Envelope.sign(no_subject.to_bytes(), [key]), key.public)
    assert info.value.check == "subject"
    broken = _predicate().to_json()
    del broken["prompt"]
    statement = Statement(
        subjects=(Subject("completion", output),),
        predicate_type=COMPLETION_PREDICATE_TYPE,
        predicate=broken,
    )
    with pytest.raises(VerificationError) as info:
        open_completion(Envelope.sign(statement.to_bytes(), [key]), key.public)
    assert info.value.check == "predicate"
