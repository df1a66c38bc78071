"""The OpenAI-compatible API on a real local network: a coordinator and two nodes of two
operators (``veriml serve`` processes) running the real SmolLM2-135M GGUF through llama.cpp.

Answers are checked the way a client would: every receipt opens under the node key the
coordinator registered, its output digest is recomputed from the returned tokens and content,
and the logged entry is proved against the signed checkpoint. Generations stay short
(``max_tokens`` 8-16) so the module runs in well under a minute once the nodes have the model.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from _llm import make_smollm2_folder
from veriml.client import Client, LocalNetwork
from veriml.core.canonical import canonical_digest
from veriml.core.completion import completion_output_digest, open_completion, token_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import VerifyingKey, generate_key
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.tlog import LogClient, NoteVerifier, leaf_hash, open_checkpoint, verify_inclusion
from veriml.verify.policy import Verdict

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name a colour."}]
TIMEOUT = 300


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    root = tmp_path_factory.mktemp("openai-api")
    folder = make_smollm2_folder(root / "smollm2", name="smollm2", version="1.0.0")
    generate_key("ec").save(root / "publisher.key")
    network = LocalNetwork(root / "net", nodes=2, port=0, start_timeout=120)
    try:
        network.start()
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, root / "publisher.key")
        yield network
    finally:
        network.stop()


def node_keys(net: LocalNetwork) -> dict[str, VerifyingKey]:
    nodes = httpx.get(net.url + "/v1/nodes").json()["nodes"]
    return {n["node_id"]: VerifyingKey.from_pem(n["public_key"].encode()) for n in nodes}


def post(net: LocalNetwork, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(net.url + path, json=body, headers=headers, timeout=TIMEOUT)


def check_answer(net: LocalNetwork, body: dict[str, Any]) -> InferenceEntry:
    """Receipts under the registered keys, output digests recomputed, the entry proved."""
    veriml = body["veriml"]
    keys = node_keys(net)
    message = body["choices"][0].get("message")
    content = message["content"] if message else body["choices"][0]["text"]
    output = completion_output_digest(
        content=content,
        tool_calls=(message or {}).get("tool_calls") or [],
        tokens=veriml["completion_tokens"],
        finish_reason=body["choices"][0]["finish_reason"],
    )
    request_digest = canonical_digest(veriml["canonical_request"])
    for node, raw in zip(veriml["nodes"], veriml["receipts"], strict=True):
        predicate, signed = open_completion(Envelope.from_json(raw), keys[node["id"]])
        assert predicate.request_digest == request_digest
        assert predicate.prompt_digest == token_digest(veriml["prompt_tokens"])
        assert predicate.trust == "reexecutable"
        if veriml["verdict"]["outcome"] == "accepted":
            assert signed == output
    entry = InferenceEntry(
        request_id=veriml["id"],
        request_digest=request_digest,
        model=Digest.from_text(veriml["model"]),
        policy=veriml["policy"],
        receipts=tuple(Envelope.from_json(r) for r in veriml["receipts"]),
        verdict=Verdict.from_json(veriml["verdict"]),
        extra=veriml["request"],
        state=veriml["bonds"]["state"],  # the ledger state it was scheduled under
    )
    log = veriml["log"]
    verifier = NoteVerifier.from_vkey(net.log_vkey)
    checkpoint, _ = open_checkpoint(log["checkpoint"].encode(), verifier)
    proof = [base64.b64decode(h) for h in log["inclusion_proof"]]
    verify_inclusion(
        leaf_hash(entry.to_bytes()), log["index"], checkpoint.size, proof, checkpoint.root_hash
    )
    with LogClient(net.url + "/log/", verifier) as client:
        logged, _ = client.entry(log["index"], client.checkpoint())
    assert parse_entry(logged) == entry  # what the ledger fold and auditors read back
    return entry


def test_a_chat_completion_is_answered_verified_and_logged(net: LocalNetwork) -> None:
    response = post(
        net, "/v1/chat/completions", {"model": "smollm2", "messages": MESSAGES, "max_tokens": 8}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["model"]) == ("chat.completion", "smollm2")
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == len(body["veriml"]["completion_tokens"])
    assert usage["prompt_tokens"] == len(body["veriml"]["prompt_tokens"])
    header = json.loads(base64.b64decode(response.headers["X-Veriml-Receipt"]))
    assert header == body["veriml"]["receipts"][0]
    entry = check_answer(net, body)
    assert (entry.verdict.outcome, entry.extra) == ("accepted", {"kind": "chat.completion"})


def test_a_quorum_of_two_nodes_samples_the_same_tokens_bit_for_bit(net: LocalNetwork) -> None:
    request = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 12, "temperature": 0.9}
    response = post(net, "/v1/chat/completions", request, **{"X-Veriml-Policy": "quorum:2/2"})
    assert response.status_code == 200, response.text
    body = response.json()
    entry = check_answer(net, body)
    assert entry.verdict.outcome == "accepted"
    assert len(entry.verdict.agreeing) == 2
    # No seed was sent: the coordinator chose one, and both nodes sampled with it.
    seeds = set()
    for raw in body["veriml"]["receipts"]:
        predicate = json.loads(base64.b64decode(raw["payload"]))["predicate"]
        seeds.add(predicate["sampling"]["seed"])
    assert seeds == {body["veriml"]["canonical_request"]["seed"]}


def test_a_streamed_chat_is_the_same_text_as_its_logged_answer(net: LocalNetwork) -> None:
    request = {"model": "smollm2", "messages": MESSAGES, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", net.url + "/v1/chat/completions", json=request, timeout=TIMEOUT) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert lines[-3] == "event: veriml"
    final = json.loads(lines[-2].removeprefix("data: "))
    assert final["choices"] == []  # a chunk OpenAI's clients pass through
    veriml = final["veriml"]
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-3]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    finish = chunks[-1]["choices"][0]["finish_reason"]
    answer = {
        "choices": [{"message": {"content": text}, "finish_reason": finish}],
        "veriml": veriml,
    }
    assert check_answer(net, answer).verdict.outcome == "accepted"


def test_a_text_completion_under_prefill_is_checked_by_the_other_node(net: LocalNetwork) -> None:
    request = {"model": "smollm2", "prompt": "The sky is", "max_tokens": 8, "temperature": 0}
    response = post(net, "/v1/completions", request | {"veriml": {"policy": "prefill"}})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "text_completion"
    veriml = body["veriml"]
    assert veriml["verdict"]["outcome"] == "accepted"
    assert len(veriml["receipts"]) == 2
    generator, checker = (n["id"] for n in veriml["nodes"])
    assert generator != checker
    check = json.loads(base64.b64decode(veriml["receipts"][1]["payload"]))
    assert check["predicate"]["report"]["accepted"] is True
    assert check["predicate"]["report"]["checked"] == len(veriml["completion_tokens"])


def test_embeddings_are_answered_with_a_receipt(net: LocalNetwork) -> None:
    response = post(net, "/v1/embeddings", {"model": "smollm2", "input": ["red", "blue"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert len(body["data"][0]["embedding"]) == len(body["data"][1]["embedding"]) > 0
    assert body["veriml"]["verdict"]["outcome"] == "accepted"


@pytest.mark.parametrize(
    ("request_body", "status", "code", "param"),
    [
        ({"model": "nope", "messages": MESSAGES}, 404, "model_not_found", "model"),
        ({"model": "smollm2", "messages": MESSAGES, "max_tokens": 10**6}, 400,
         "max_tokens_exceeded", "max_tokens"),
        ({"model": "smollm2", "messages": [{"content": "no role"}]}, 400, None, None),
        ({"model": "smollm2", "messages": MESSAGES, "temperature": -1}, 400, None,
         "temperature"),
    ],
)  # fmt: skip
def test_bad_requests_are_openai_errors(
    net: LocalNetwork,
    request_body: dict[str, Any],
    status: int,
    code: str | None,
    param: str | None,
) -> None:
    response = post(net, "/v1/chat/completions", request_body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    else:
        assert error["param"]  # the member at fault is named


def test_a_prompt_longer_than_the_nodes_context_is_context_length_exceeded(
    net: LocalNetwork,
) -> None:
    long = [{"role": "user", "content": "colour " * 5000}]
    response = post(
        net, "/v1/chat/completions", {"model": "smollm2", "messages": long, "max_tokens": 8}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_the_official_openai_client_chats_and_streams(net: LocalNetwork) -> None:
    client = openai.OpenAI(base_url=net.url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
        extra_body={"veriml": {"policy": "quorum:2/2"}},
    )
    assert reply.choices[0].message.content
    veriml = (reply.model_extra or {})["veriml"]
    assert veriml["verdict"]["outcome"] == "accepted"
    stream = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    text = ""
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    # Greedy and deterministic: the stream is the answer the quorum agreed on.
    assert text == reply.choices[0].message.content


@pytest.mark.parametrize("policy", ["prefill", "spot:1"])
def test_the_sdk_verifies_checked_answers_end_to_end(net: LocalNetwork, policy: str) -> None:
    with Client(net.url, log_vkey=net.log_vkey) as client:
        result = client.chat("smollm2", MESSAGES, policy=policy, max_tokens=8, temperature=0)
    assert result.verified  # the SDK's own checks all passed (it raises otherwise)
    assert result.verdict.outcome == "accepted"
    assert len(result.verdict.agreeing) == 2
    assert result.trust == "reexecutable"
    assert result.content


def test_answers_are_counted_by_policy_and_verdict(net: LocalNetwork) -> None:
    response = post(net, "/v1/completions", {"model": "smollm2", "prompt": "Hi", "max_tokens": 8})
    assert response.status_code == 200, response.text
    metrics = httpx.get(net.url + "/metrics").text
    line = 'veriml_completion_verdicts_total{outcome="accepted",policy="none"}'
    counted = [row for row in metrics.splitlines() if row.startswith(line)]
    assert len(counted) == 1
    assert float(counted[0].split()[-1]) >= 1


@pytest.fixture(scope="module")
def relayed(net: LocalNetwork, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A second network whose one node relays to the first network's OpenAI API."""
    home = tmp_path_factory.mktemp("relay-net")
    relay_args = ("--relay", net.url + "/v1", "--relay-model", "smollm2")
    with LocalNetwork(home, nodes=1, port=0, node_args=relay_args, start_timeout=120) as relay:
        yield relay


def test_a_relayed_model_is_answered_as_attested_relay_and_logged(
    net: LocalNetwork, relayed: LocalNetwork
) -> None:
    request = {"model": "relay:smollm2", "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    response = post(relayed, "/v1/chat/completions", request)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "relay:smollm2"
    assert body["choices"][0]["message"]["content"]
    veriml = body["veriml"]
    assert veriml["model"] == Digest.of(b"relay:smollm2").to_text()
    assert veriml["verdict"]["outcome"] == "accepted"
    predicate = json.loads(base64.b64decode(veriml["receipts"][0]["payload"]))["predicate"]
    assert predicate["trust"] == "attested-relay"
    assert predicate["model"] == {"upstream": net.url + "/v1", "name": "smollm2"}
    with Client(relayed.url, log_vkey=relayed.log_vkey) as client:
        result = client.chat("relay:smollm2", MESSAGES, max_tokens=8, temperature=0)
    assert result.trust == "attested-relay"
    assert result.verified
    # A relay has no tokens to check: prefill is refused before anything runs.
    refused = post(relayed, "/v1/chat/completions", request | {"veriml": {"policy": "prefill"}})
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "veriml.policy"
