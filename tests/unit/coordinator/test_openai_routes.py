"""The OpenAI-compatible routes refuse bad requests with OpenAI error objects, before any node
is asked: a coordinator in-process with a small synthetic GGUF model (context 64) and an ONNX
model registered, and no node at all."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _coordinator import SignedModel, make_signed_model, running_coordinator, tar_folder
from _llm import gguf_bytes
from veriml.coordinator.llm.routes import chat_body, completion_body, embedding_body
from veriml.coordinator.llm.service import CompletionAnswer, NodeAnswer
from veriml.core.completion import CompletionPredicate
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import generate_key
from veriml.models import sign_model

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def _signed_gguf(root: Path) -> SignedModel:
    folder = root / "tiny"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(gguf_bytes())
    (folder / "README.md").write_text("---\nname: tiny\nversion: 1.0.0\n---\n")
    key = generate_key("ec")
    key.save(root / "tiny.key")
    sign_model(folder, root / "tiny.key")
    return SignedModel(folder, key)


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("openai-routes")
    tiny = _signed_gguf(root)
    mlp = make_signed_model(root, name="mlp", version="1.0.0")
    with running_coordinator(root / "home") as (base, _):
        for model in (tiny, mlp):
            response = model.post(base, tar_folder(model.folder))
            assert response.status_code == 201, response.text
        yield base


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_malformed_json_is_an_invalid_request(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions", content=b"{not json")
    assert _error(response, 400)["type"] == "invalid_request_error"


def test_an_unknown_model_is_404_model_not_found(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=CHAT | {"model": "nope"})
    error = _error(response, 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def test_an_onnx_model_is_not_a_language_model(url: str) -> None:
    response = httpx.post(url + "/v1/completions", json={"model": "mlp", "prompt": "Hi"})
    error = _error(response, 400)
    assert (error["code"], error["param"]) == ("model_not_supported", "model")


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"n": 2}, "n"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"1": 3}}, "logit_bias"),
        ({"messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
        ({"messages": "Hi"}, "messages"),
        ({"stream": "yes"}, "stream"),
        ({"veriml": {"policy": "quorum:9/12"}}, "veriml.policy"),
        ({"veriml": {"policy": "quorum:2/2,tolerance"}}, "veriml.policy"),
        ({"veriml": {"policy": "optimistic:10m"}}, "veriml.policy"),
        ({"veriml": {"verdict": "accept please"}}, "veriml"),
    ],
)
def test_an_invalid_parameter_is_400_naming_it(
    url: str, change: dict[str, Any], param: str
) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=CHAT | change)
    error = _error(response, 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_max_tokens_beyond_the_context_is_refused_before_any_node_runs(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=CHAT | {"max_tokens": 65})
    error = _error(response, 400)
    assert (error["code"], error["param"]) == ("max_tokens_exceeded", "max_tokens")


def test_a_streamed_request_that_cannot_run_is_an_error_not_a_stream(url: str) -> None:
    response = httpx.post(url + "/v1/chat/completions", json=CHAT | {"stream": True, "n": 3})
    assert _error(response, 400)["param"] == "n"


def test_no_node_running_llama_cpp_is_503_with_retry_after(url: str) -> None:
    for path, body in [
        ("/v1/chat/completions", CHAT),
        ("/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 2}),
        ("/v1/embeddings", {"model": "tiny", "input": "Hi"}),
    ]:
        response = httpx.post(url + path, json=body)
        assert _error(response, 503)["code"] == "no_nodes_available"
        assert response.headers["retry-after"] == "1"


def test_an_unknown_embedding_encoding_is_refused(url: str) -> None:
    response = httpx.post(
        url + "/v1/embeddings", json={"model": "tiny", "input": "Hi", "encoding_format": "hex"}
    )
    assert _error(response, 400)["param"] == "encoding_format"


# -- the response shapes (pure) ------------------------------------------------------------------


def _answer(**members: Any) -> CompletionAnswer:
    predicate = CompletionPredicate(
        request_id="r1",
        request_digest=Digest.of(b"request"),
        model_digest=Digest.of(b"model"),
        model_files=None,
        prompt_count=3,
        prompt_digest=Digest.of(b"prompt"),
        completion_count=2,
        finish_reason="stop",
        sampling=None,
        runtime={},
        node_id="n1",
        policy="none",
        trust="reexecutable",
        started="2026-01-01T00:00:00Z",
        finished="2026-01-01T00:00:01Z",
    )
    receipt = Envelope.sign(b"{}", [generate_key("ed25519")])
    node = NodeAnswer(receipt=receipt, predicate=predicate, output=Digest.of(b"out"), **members)
    return CompletionAnswer(node, {"id": "r1", "receipts": [receipt.to_json()]})


def test_a_chat_body_counts_the_receipts_tokens_and_echoes_the_model_id() -> None:
    answer = _answer(prompt_tokens=(1, 2, 3), completion_tokens=(4, 5), content="Hi!")
    body = chat_body(answer, "smollm2@1.0.0", 1700000000)
    assert body["id"] == "chatcmpl-r1"
    assert (body["object"], body["model"], body["created"]) == (
        "chat.completion",
        "smollm2@1.0.0",
        1700000000,
    )
    assert body["choices"][0]["message"]["content"] == "Hi!"
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert body["veriml"] == {"id": "r1", "receipts": answer.veriml["receipts"]}


def test_a_chat_body_carries_tool_calls() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    answer = _answer(prompt_tokens=(1,), completion_tokens=(2,), content=None, tool_calls=(call,))
    message = chat_body(answer, "m", 0)["choices"][0]["message"]
    assert (message["content"], message["tool_calls"]) == (None, [call])


def test_a_completion_body_has_text_choices() -> None:
    answer = _answer(prompt_tokens=(1,), completion_tokens=(2, 3), content=" there")
    body = completion_body(answer, "m", 0)
    assert (body["object"], body["choices"][0]["text"]) == ("text_completion", " there")
    assert body["id"] == "cmpl-r1"


def test_base64_embeddings_are_little_endian_float32_like_openais() -> None:
    vectors = (np.array([0.5, -1.25, 3.0], dtype=np.float32),)
    answer = _answer(prompt_tokens=((1, 2, 3),), embeddings=vectors)
    as_floats = embedding_body(answer, "m", "float")
    as_base64 = embedding_body(answer, "m", "base64")
    assert as_floats["data"][0]["embedding"] == [0.5, -1.25, 3.0]
    raw = base64.b64decode(as_base64["data"][0]["embedding"])
    assert np.frombuffer(raw, dtype="<f4").tolist() == [0.5, -1.25, 3.0]
    assert as_floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert as_floats["object"] == "list"
