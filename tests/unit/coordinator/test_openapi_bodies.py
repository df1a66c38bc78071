"""The coordinator's OpenAPI document describes the bodies clients really send.

The routes read raw bytes (a signature covers them), so nothing makes the documented request
bodies true but this test: every body the SDK, OpenAI's SDK, a challenger and a node send is
built by their own code, recorded on the wire (an httpx mock transport) and validated against
the schema ``/openapi.json`` declares for its route; and the same schemas refuse what the
coordinator refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import numpy as np
import openai
import pytest
from fastapi.testclient import TestClient

from veriml.client import Client
from veriml.client._disputes import Challenger, reveal_body, tensors_body
from veriml.coordinator.app import create_app
from veriml.coordinator.schemas import POLICY_PATTERN
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.errors import Error, FormatError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.tensors import tensor_to_json
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node._coordinator import CoordinatorLink
from veriml.protocol.accounts import LedgerRequest, OperatorBinding
from veriml.protocol.messages import Heartbeat
from veriml.protocol.policy import Policy
from veriml.runtime import run

URL = "http://coordinator.test"
PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The document as the coordinator serves it."""
    app = create_app(Settings(home=tmp_path_factory.mktemp("coordinator")))
    response = TestClient(app).get("/openapi.json")
    assert response.status_code == 200
    spec: dict[str, Any] = response.json()
    return spec


def _validator(document: dict[str, Any], path: str, media: str = "application/json") -> Any:
    """The validator of ``POST path``'s documented body (references resolved in the document)."""
    schema = document["paths"][path]["post"]["requestBody"]["content"][media]["schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def _assert_valid(document: dict[str, Any], request: httpx.Request) -> None:
    body = json.loads(request.content)
    errors = [e.message for e in _validator(document, request.url.path).iter_errors(body)]
    assert not errors, (request.url.path, errors[:3], body)


class _Recorder:
    """Answers the reads the SDK makes first, records every POST and refuses it (400)."""

    def __init__(self) -> None:
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/ledger/rules":
            return httpx.Response(
                200, json={"rules": {"challenge_bond": 5}, "state": 1, "epoch": 3}
            )
        self.sent.append(request)
        problem = {"type": "about:blank", "title": "Bad Request", "status": 400, "detail": "rec"}
        return httpx.Response(400, json=problem, headers={"content-type": PROBLEM})


def _recorded(tmp_path: Path, key: SigningKey, call: Callable[[Client], object]) -> httpx.Request:
    """The one POST ``call`` makes with a client (signing with ``key``), as sent."""
    recorder = _Recorder()
    client = Client(URL, key=key, verify=False, checkpoints=False, home=tmp_path, retries=0)
    client._http = httpx.Client(base_url=URL, transport=httpx.MockTransport(recorder))
    with client, pytest.raises(Error):
        call(client)
    assert len(recorder.sent) == 1
    return recorder.sent[0]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A traced run of a small model, its tensors kept (what a challenger disputes with)."""
    folder = tmp_path_factory.mktemp("mlp") / "mlp"
    write_example_folder(folder, build_mlp((4, 8, 3), seed=1), name="mlp")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    package = ModelPackage.load(folder)
    return run(package, {"x": x}, key=generate_key("ed25519"), trace=True, keep_tensors=True)


X = np.arange(8, dtype=np.float32).reshape(2, 4)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hi"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "content": "42", "tool_call_id": "c1"},
]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


SDK_CALLS: dict[str, Callable[[Client], object]] = {
    "infer": lambda c: c.infer("acme/mlp", {"x": X}, policy="quorum:2/2"),
    "infer, non-finite inputs as b64": lambda c: c.infer(
        "sha256:" + "ab" * 32, {"x": np.array([np.nan, np.inf], dtype=np.float64)}
    ),
    "chat": lambda c: c.chat(
        "smollm2",
        MESSAGES,
        policy="prefill",
        max_tokens=16,
        temperature=0,
        seed=7,
        stop=["\n"],
        tools=TOOLS,
        tool_choice="auto",
    ),
    "chat, streamed": lambda c: c.chat("smollm2", MESSAGES[:2], stream=True, top_p=0.9),
    "complete": lambda c: c.complete("smollm2", "Once", max_tokens=4, top_k=40),
    "embed": lambda c: c.embed("smollm2", ["a", "b"], policy="quorum:2/2"),
    "stake": lambda c: c.stake(100),
    "unstake": lambda c: c.unstake(100),
    "deposit": lambda c: c.deposit("sha256:" + "cd" * 32, 1000, generate_key("ed25519")),
}


@pytest.mark.parametrize("call", SDK_CALLS.values(), ids=SDK_CALLS.keys())
def test_every_body_the_sdk_sends_validates_against_its_routes_schema(
    document: dict[str, Any], tmp_path: Path, call: Callable[[Client], object]
) -> None:
    _assert_valid(document, _recorded(tmp_path, generate_key("ed25519"), call))


def test_a_challengers_bodies_validate_against_the_dispute_routes_schemas(
    document: dict[str, Any], tmp_path: Path, traced: Any
) -> None:
    trace = traced.trace
    outputs = {name: Digest.of(b"out") for name in traced.outputs}
    sent = _recorded(
        tmp_path,
        generate_key("ed25519"),
        lambda c: Challenger(c).open("req-1", "sha256:" + "ef" * 32, trace, outputs),
    )
    assert sent.url.path == "/v1/disputes"
    _assert_valid(document, sent)
    reveal = _validator(document, "/v1/disputes/{dispute_id}/reveal")
    assert reveal.is_valid(reveal_body(trace, 0))
    assert reveal.is_valid(reveal_body(trace, trace.size - 1))
    tensors = _validator(document, "/v1/disputes/{dispute_id}/tensors")
    assert tensors.is_valid(tensors_body(trace, list(trace.tensors)[:2]))


def _openai_bodies() -> Iterator[tuple[str, httpx.Request]]:
    recorder = _Recorder()
    client = openai.OpenAI(
        base_url=URL + "/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(recorder)),
    )
    calls: dict[str, Callable[[], object]] = {
        "chat": lambda: client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=16,
            temperature=0,
            seed=3,
            extra_body={"veriml": {"policy": "quorum:2/2"}},
        ),
        "chat, streamed with usage": lambda: client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "Say hi"}],
            stream=True,
            stream_options={"include_usage": True},
            max_completion_tokens=8,
        ),
        "completion": lambda: client.completions.create(
            model="smollm2", prompt="Once", max_tokens=4, stop="\n"
        ),
        "embedding": lambda: client.embeddings.create(model="smollm2", input=["a", "b"]),
        "embedding, float": lambda: client.embeddings.create(
            model="smollm2", input="a", encoding_format="float"
        ),
    }
    for name, call in calls.items():
        with pytest.raises(openai.BadRequestError):
            call()
        yield name, recorder.sent[-1]


def test_every_body_openais_sdk_sends_validates_against_its_routes_schema(
    document: dict[str, Any],
) -> None:
    for _, sent in _openai_bodies():
        _assert_valid(document, sent)


def test_a_nodes_descriptor_and_heartbeat_validate_against_the_registry_schemas(
    document: dict[str, Any],
) -> None:
    node, operator = generate_key("ed25519"), generate_key("ed25519")
    link = CoordinatorLink(
        url=URL,
        key=node,
        binding=OperatorBinding.of(operator, node.key_id).sign(operator),
        endpoint="http://127.0.0.1:8701",
        client=httpx.AsyncClient(),
        status=lambda: ({"active": 0, "queued": 0, "capacity": 1}, []),
        heartbeat_interval=1.0,
    )
    assert _validator(document, "/v1/nodes").is_valid(link.build_descriptor())
    heartbeat = Heartbeat(
        node_id=node.key_id,
        issued_at="2026-01-01T00:00:00Z",
        active=0,
        queued=0,
        capacity=1,
        cached=("sha256:" + "ab" * 32,),
    )
    beat = _validator(document, "/v1/nodes/{node_id}/heartbeat")
    assert beat.is_valid(heartbeat.sign(node).to_json())


def _envelope(payload_type: str) -> dict[str, Any]:
    key = generate_key("ed25519")
    request = LedgerRequest.signed(key, "stake", 1).to_json()
    return request | {"payloadType": payload_type}


GARBAGE: dict[str, list[Any]] = {
    "/v1/inferences": [
        [],
        {},
        {"model": 3, "inputs": {}},
        {"model": "m", "inputs": {"x": [1, 2]}},
        {"model": "m", "inputs": {}, "extra": 1},
        {"model": "m", "inputs": {"x": {"dtype": "float32", "shape": [1]}}},
        {"model": "m", "inputs": {"x": {"dtype": "float32", "shape": [1], "data": [1], "b64": ""}}},
        {"model": "m", "inputs": {"x": {"dtype": "complex64", "shape": [1], "data": [1]}}},
        {"model": "", "inputs": {}},
        {"model": "m", "inputs": {}, "policy": "quorum"},
        {"model": "m", "inputs": {"x": {"dtype": "uint8", "shape": [1], "b64": "AAA"}}},
    ],
    "/v1/chat/completions": [
        {"model": "m"},
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 2},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "veriml": "quorum:2/2"},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "frobnicate": True},
    ],
    "/v1/completions": [{"model": "m"}, {"model": "m", "prompt": 1}],
    "/v1/embeddings": [
        {"model": "m", "input": []},
        {"model": "m", "input": [1]},
        {"model": "m", "input": "a", "encoding_format": None},
    ],
    "/v1/nodes": [
        {"payload": "", "signatures": []},
        _envelope("application/vnd.veriml.heartbeat+json"),
        _envelope("application/vnd.veriml.node-descriptor+json") | {"payload": "not base64!"},
    ],
    "/v1/ledger/stake": [
        _envelope("application/vnd.veriml.job+json"),
        _envelope("application/vnd.veriml.ledger-request+json") | {"signatures": []},
    ],
    "/v1/disputes": [
        {"inference": "i", "node": "n"},
        {"inference": "i", "node": "n", "kind": "prefill"},
        {"inference": "i", "node": "n", "trace": {"root": "x", "size": 0}, "outputs": {}},
    ],
}


@pytest.mark.parametrize(
    ("path", "body"),
    [(path, body) for path, bodies in GARBAGE.items() for body in bodies],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_the_documented_schemas_refuse_what_the_coordinator_refuses(
    document: dict[str, Any], path: str, body: Any
) -> None:
    assert not _validator(document, path).is_valid(body)


def test_every_post_route_declares_its_body_and_every_error_is_a_problem_or_openais(
    document: dict[str, Any],
) -> None:
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "post":
                assert operation.get("requestBody", {}).get("required"), path
            for status, answer in operation["responses"].items():
                if status.startswith(("4", "5")):
                    media = set(answer.get("content", {}))
                    assert media, (path, status)
                    assert media <= {PROBLEM, "application/json"}, (path, status)
                    assert PROBLEM in media or path.startswith(
                        ("/v1/chat", "/v1/completions", "/v1/embeddings")
                    ), (path, status)


def test_the_model_upload_is_documented_as_a_signed_tar_stream(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/v1/models"]["post"]
    assert "application/x-tar" in operation["requestBody"]["content"]
    headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
    assert {"X-Veriml-Publisher-Key", "Signature-Input", "Signature", "Content-Digest"} <= headers


def test_the_document_carries_the_models_tensor_form(document: dict[str, Any]) -> None:
    tensor = {"$ref": "#/components/schemas/Tensor", "components": document["components"]}
    validator = jsonschema_rs.Draft202012Validator(tensor)
    assert validator.is_valid(tensor_to_json(X))
    assert validator.is_valid(tensor_to_json(X, force_b64=True))
    assert not validator.is_valid({"dtype": "float32", "shape": [-1], "data": []})


POLICIES = [
    "none",
    "prefill",
    "prefill,bitwise",
    "quorum:3/2",
    "quorum:2/2,tolerance",
    "spot:0.1",
    "spot:1",
    "spot:0.25,tolerance",
    "optimistic:60s",
    "optimistic:2h,bitwise",
    # What the grammar refuses:
    "",
    "None",
    "quorum:3",
    "quorum:100/2",
    "spot:.5",
    "spot:10",
    "optimistic:60",
    "none,fuzzy",
    "none,tolerance,tolerance",
    "quorum:2/2 ",
]


@pytest.mark.parametrize("text", POLICIES)
def test_the_documented_policy_pattern_is_the_policy_grammar(text: str) -> None:
    """The schema's pattern and ``Policy.parse`` agree on the grammar (a number out of range,
    such as ``quorum:2/3``, is the parser's alone: the pattern cannot count)."""
    try:
        Policy.parse(text)
        parses = True
    except FormatError:
        parses = False
    assert (re.fullmatch(POLICY_PATTERN.strip("^$"), text) is not None) == parses


def test_a_message_without_text_is_an_assistants_tool_calls(document: dict[str, Any]) -> None:
    validator = _validator(document, "/v1/chat/completions")

    def chat(message: dict[str, Any]) -> dict[str, Any]:
        return {"model": "m", "messages": [message]}

    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    assert validator.is_valid(chat({"role": "assistant", "content": None, "tool_calls": [call]}))
    assert validator.is_valid(chat({"role": "assistant", "tool_calls": [call]}))
    assert not validator.is_valid(chat({"role": "user", "content": None}))
    assert not validator.is_valid(chat({"role": "user"}))
    assert not validator.is_valid(chat({"role": "assistant", "content": None, "tool_calls": []}))
    assert not validator.is_valid(chat({"role": "tool", "content": "42"}))
