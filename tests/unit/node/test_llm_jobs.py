"""LLM jobs on a node serving the real SmolLM2-135M GGUF: completions (whole and streamed) whose
receipts bind the request, embeddings, prefill checks that accept an honest completion and
reject a swapped token, and the byzantine LLM modes those checks exist to catch."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _node_harness import HubStandIn, node_config, running_node, wait_until

from _llm import make_smollm2_folder
from _servers import serve
from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    completion_output_digest,
    embedding_output_digest,
    open_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import SigningKey, VerifyingKey, generate_key
from veriml.core.tensors import tensor_from_json
from veriml.models import sign_model
from veriml.models.gguf import LLMPackage
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time
from veriml.protocol.openai_requests import canonical_request
from veriml.protocol.prefill_check import open_prefill_check

MESSAGES = [{"role": "user", "content": "Name three colours."}]


@dataclass(frozen=True)
class LLMHub:
    url: str
    stand_in: HubStandIn
    digest: Digest
    coordinator_key: SigningKey
    coordinator_pub: Path


def _publish_gguf(hub: HubStandIn, folder: Path, publisher: SigningKey) -> Digest:
    """What the coordinator's hub serves for a GGUF package (HubStandIn.publish is ONNX-only)."""
    package = LLMPackage.load(folder)
    files = []
    for entry in package.manifest:
        data = (folder / entry.path).read_bytes()
        hub.blobs[entry.digest.to_text()] = data
        files.append({"path": entry.path, "digest": entry.digest.to_text(), "size": len(data)})
    signature = (folder / "model.sig").read_bytes()
    hub.blobs[Digest.of(signature).to_text()] = signature
    pem = publisher.public.to_pem().decode()
    hub.models[package.digest.to_text()] = {
        "digest": package.digest.to_text(),
        "files": files,
        "publisher": {"key_id": publisher.key_id, "public_key": pem},
        "signature": Digest.of(signature).to_text(),
    }
    return package.digest


@pytest.fixture(scope="module")
def llm_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LLMHub]:
    root = tmp_path_factory.mktemp("llm-hub")
    folder = make_smollm2_folder(root / "smollm2")
    publisher = generate_key("ec")
    publisher.save(root / "publisher.key")
    sign_model(folder, root / "publisher.key")
    coordinator_key = generate_key("ed25519")
    pub = root / "coordinator.pub"
    pub.write_bytes(coordinator_key.public.to_pem())
    stand_in = HubStandIn(coordinator_key)
    digest = _publish_gguf(stand_in, folder, publisher)
    with serve(stand_in.app()) as url:
        yield LLMHub(url, stand_in, digest, coordinator_key, pub)


@dataclass(frozen=True)
class RunningNode:
    url: str
    node_id: str
    key: VerifyingKey


@contextlib.contextmanager
def _node(hub: LLMHub, home: Path, **overrides: Any) -> Iterator[RunningNode]:
    config = node_config(home, hub.url, hub.coordinator_pub, **overrides)
    with running_node(config) as url:
        info = httpx.get(f"{url}/v1/info").json()
        yield RunningNode(url, info["node_id"], VerifyingKey.from_pem(info["public_key"].encode()))


@pytest.fixture(scope="module")
def node(llm_hub: LLMHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    with _node(llm_hub, tmp_path_factory.mktemp("node")) as running:
        yield running


def _canonical(hub: LLMHub, **body: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "max_tokens": 12}
    fields.update(body)
    kind = "embedding" if "input" in fields else "chat.completion"
    if kind == "embedding":
        fields = {"input": fields["input"]}
    return canonical_request(kind, hub.digest, fields, seed=11)


def _body(
    hub: LLMHub,
    node: RunningNode,
    canonical: dict[str, Any],
    *,
    kind: str = "completion",
    completion: dict[str, Any] | None = None,
    request_id: str | None = None,
    signed_request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    issued = dt.datetime.now(dt.UTC)
    job = Job(
        job_id=str(uuid.uuid4()),
        node_id=node.node_id,
        request_id=request_id or str(uuid.uuid4()),
        model=hub.digest,
        inputs={},
        policy="none",
        issued_at=format_time(issued),
        expires_at=format_time(issued + dt.timedelta(seconds=60)),
        kind=kind,
        request=signed_request if signed_request is not None else canonical,
    )
    body: dict[str, Any] = {"job": job.sign(hub.coordinator_key).to_json(), "request": canonical}
    if completion is not None:
        body["completion"] = completion
    return body


def _post(node: RunningNode, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{node.url}/v1/jobs", json=body, headers=headers, timeout=120)


def _complete(hub: LLMHub, node: RunningNode, canonical: dict[str, Any]) -> dict[str, Any]:
    response = _post(node, _body(hub, node, canonical, request_id="r-llm"))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def _opened(node: RunningNode, answer: dict[str, Any]) -> tuple[Any, Digest]:
    return open_completion(Envelope.from_json(answer["receipt"]), node.key)


def test_a_completion_receipt_binds_the_request_model_tokens_and_content(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub)
    answer = _complete(llm_hub, node, canonical)
    predicate, output = _opened(node, answer)
    assert predicate.request_id == "r-llm"
    assert predicate.request_digest == canonical_digest(canonical)
    assert predicate.model_digest == llm_hub.digest
    assert predicate.node_id == node.node_id
    assert predicate.policy == "none"
    assert predicate.trust == "reexecutable"
    assert predicate.sampling is not None
    assert predicate.sampling.seed == 11
    assert predicate.runtime["engine"] == "llama.cpp"
    assert predicate.runtime["n_threads"] == 1
    assert predicate.prompt_digest == token_digest(answer["prompt_tokens"])
    assert predicate.prompt_count == len(answer["prompt_tokens"])
    assert predicate.completion_count == len(answer["completion_tokens"]) > 0
    assert output == completion_output_digest(
        content=answer["content"],
        tool_calls=answer["tool_calls"],
        tokens=answer["completion_tokens"],
        finish_reason=answer["finish_reason"],
    )
    assert answer["content"]


def test_greedy_completions_repeat_token_for_token(llm_hub: LLMHub, node: RunningNode) -> None:
    canonical = _canonical(llm_hub)
    first, second = _complete(llm_hub, node, canonical), _complete(llm_hub, node, canonical)
    assert first["completion_tokens"] == second["completion_tokens"]
    assert _opened(node, first)[1] == _opened(node, second)[1]


def test_a_streamed_completion_sends_each_token_then_the_same_signed_answer(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub)
    whole = _complete(llm_hub, node, canonical)
    body = _body(llm_hub, node, canonical, request_id="r-llm")
    with httpx.stream(
        "POST", f"{node.url}/v1/jobs", json=body, headers={"Accept": "application/x-ndjson"}
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    *tokens, last = lines
    assert [t["token"] for t in tokens] == whole["completion_tokens"]
    assert "".join(t["text"] for t in tokens) == whole["content"]
    result = last["result"]
    assert result["completion_tokens"] == whole["completion_tokens"]
    assert _opened(node, result)[1] == _opened(node, whole)[1]


def test_a_refused_streamed_job_is_a_problem_before_any_line(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub)
    body = _body(llm_hub, node, canonical)
    body["request"] = _canonical(llm_hub, max_tokens=13)  # not the request the job signed
    response = _post(node, body, Accept="application/x-ndjson")
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["check"] == "job-request"


def test_a_request_other_than_the_signed_one_is_refused(llm_hub: LLMHub, node: RunningNode) -> None:
    canonical = _canonical(llm_hub)
    other = _canonical(llm_hub, seed=12)
    response = _post(node, _body(llm_hub, node, other, signed_request=canonical))
    assert response.status_code == 422, response.text
    assert response.json()["check"] == "job-request"


def test_a_request_too_long_for_the_context_is_refused_before_generating(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub, max_tokens=4096)
    response = _post(node, _body(llm_hub, node, canonical))
    assert response.status_code == 413, response.text
    assert response.json()["limit"] == 2048


def test_an_embedding_receipt_signs_the_vectors(llm_hub: LLMHub, node: RunningNode) -> None:
    canonical = _canonical(llm_hub, input=["red", "green"])
    response = _post(node, _body(llm_hub, node, canonical, kind="embedding"))
    assert response.status_code == 200, response.text
    answer = response.json()
    vectors = [tensor_from_json(v) for v in answer["embeddings"]]
    assert len(vectors) == 2
    assert vectors[0].shape == vectors[1].shape
    predicate, output = _opened(node, answer)
    assert output == embedding_output_digest(vectors)
    assert predicate.sampling is None
    assert predicate.request_digest == canonical_digest(canonical)


def _prefill(
    hub: LLMHub, node: RunningNode, canonical: dict[str, Any], answer: dict[str, Any]
) -> Any:
    completion = {
        "receipt": answer["receipt"],
        "prompt_tokens": answer["prompt_tokens"],
        "completion_tokens": answer["completion_tokens"],
    }
    response = _post(node, _body(hub, node, canonical, kind="prefill", completion=completion))
    assert response.status_code == 200, response.text
    check = open_prefill_check(Envelope.from_json(response.json()["receipt"]), node.key)
    assert check.receipt == Digest.of(Envelope.from_json(answer["receipt"]).payload)
    assert check.model == hub.digest
    assert check.node_id == node.node_id
    return check


def test_a_prefill_check_accepts_an_honest_completion(llm_hub: LLMHub, node: RunningNode) -> None:
    canonical = _canonical(llm_hub)
    answer = _complete(llm_hub, node, canonical)
    check = _prefill(llm_hub, node, canonical, answer)
    assert check.accepted, check.report
    assert check.report["checked"] == len(answer["completion_tokens"])


def test_a_prefill_check_accepts_a_seeded_sampled_completion(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub, temperature=0.8, top_p=0.95, seed=5)
    answer = _complete(llm_hub, node, canonical)
    assert _prefill(llm_hub, node, canonical, answer).accepted


def test_a_prefill_check_rejects_a_swapped_token(llm_hub: LLMHub, node: RunningNode) -> None:
    canonical = _canonical(llm_hub)
    answer = _complete(llm_hub, node, canonical)
    tokens = list(answer["completion_tokens"])
    at = len(tokens) // 2
    tokens[at] = next(t for t in tokens if t != tokens[at])
    check = _prefill(llm_hub, node, canonical, answer | {"completion_tokens": tokens})
    assert not check.accepted
    assert check.report["first_failure"] == at


def test_a_prefill_job_for_token_lists_its_receipt_does_not_sign_is_refused(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = _canonical(llm_hub)
    answer = _complete(llm_hub, node, canonical)
    completion = {
        "receipt": answer["receipt"],
        "prompt_tokens": answer["prompt_tokens"][1:],
        "completion_tokens": answer["completion_tokens"],
    }
    body = _body(llm_hub, node, canonical, kind="prefill", completion=completion)
    response = _post(node, body)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize("mode", ["wrong-output", "substitute"])
def test_a_byzantine_completion_is_well_signed_but_fails_the_prefill_check(
    llm_hub: LLMHub, node: RunningNode, tmp_path: Path, mode: str
) -> None:
    canonical = _canonical(llm_hub, max_tokens=16)
    honest = _complete(llm_hub, node, canonical)
    with _node(llm_hub, tmp_path / mode, byzantine=mode) as cheat:
        lie = _complete(llm_hub, cheat, canonical)
        body = _body(llm_hub, cheat, canonical, request_id="r-llm")
        with httpx.stream(
            "POST", f"{cheat.url}/v1/jobs", json=body, headers={"Accept": "application/x-ndjson"}
        ) as response:
            streamed = [json.loads(line) for line in response.iter_lines() if line]
    # The lie is as well-formed as the truth: its receipt opens and binds the request...
    predicate, output = _opened(cheat, lie)
    assert predicate.request_digest == canonical_digest(canonical)
    assert predicate.sampling is not None
    assert predicate.sampling.temperature == 0.0
    assert output == completion_output_digest(
        content=lie["content"],
        tool_calls=lie["tool_calls"],
        tokens=lie["completion_tokens"],
        finish_reason=lie["finish_reason"],
    )
    assert lie["completion_tokens"] != honest["completion_tokens"]
    # ...its stream tells the same lie...
    assert [e["token"] for e in streamed[:-1]] == lie["completion_tokens"]
    assert "".join(e["text"] for e in streamed[:-1]) == lie["content"]
    # ...and an honest node's prefill check catches it.
    check = _prefill(llm_hub, node, canonical, lie)
    assert not check.accepted
    assert check.report["first_failure"] is not None


def test_the_node_says_it_runs_llama_cpp_and_pulls_the_gguf_once(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    descriptors = [d for d in llm_hub.stand_in.registrations if d.node_id == node.node_id]
    assert descriptors
    assert descriptors[-1].engines == ("onnxruntime", "llama.cpp")
    health = httpx.get(f"{node.url}/healthz").json()
    assert health["loaded"] == [llm_hub.digest.to_text()]
    assert health["cached"] == [llm_hub.digest.to_text()]


def test_a_generation_past_the_job_timeout_stops_and_frees_its_slot(
    llm_hub: LLMHub, tmp_path: Path
) -> None:
    canonical = canonical_request(
        "text_completion",
        llm_hub.digest,
        {"prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 1800},
        seed=1,
    )
    with _node(llm_hub, tmp_path / "slow", job_timeout=2.0, concurrency=1) as slow:
        # The first jobs may time out while the model is pulled and loaded; it stays loaded.
        deadline = time.monotonic() + 60
        while _post(slow, _body(llm_hub, slow, _canonical(llm_hub))).status_code != 200:
            assert time.monotonic() < deadline, "the model never loaded"
        started = time.monotonic()
        response = _post(slow, _body(llm_hub, slow, canonical))
        assert response.status_code == 504, response.text
        assert response.json()["timeout_seconds"] == 2.0
        assert time.monotonic() - started < 6
        # The worker stops at its next token instead of generating 1800 of them.
        deadline = time.monotonic() + 3
        while httpx.get(f"{slow.url}/healthz").json()["load"]["active"]:
            assert time.monotonic() < deadline, "the timed-out generation kept its slot"
            time.sleep(0.05)
        assert _post(slow, _body(llm_hub, slow, _canonical(llm_hub))).status_code == 200


def test_a_streaming_client_that_leaves_stops_the_generation(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    canonical = canonical_request(
        "text_completion",
        llm_hub.digest,
        {"prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 1800},
        seed=1,
    )
    body = _body(llm_hub, node, canonical)
    with httpx.stream(
        "POST", f"{node.url}/v1/jobs", json=body, headers={"Accept": "application/x-ndjson"}
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines))
        assert isinstance(first["token"], int)
    # The connection is closed after one of 1800 tokens: the worker stops soon after.
    deadline = time.monotonic() + 10
    while httpx.get(f"{node.url}/healthz").json()["load"]["active"]:
        assert time.monotonic() < deadline, "the abandoned generation kept running"
        time.sleep(0.05)


def test_a_restarted_node_reuses_its_verified_gguf_cache_without_pulling(
    llm_hub: LLMHub, tmp_path: Path
) -> None:
    home = tmp_path / "cached"
    with _node(llm_hub, home) as first:
        answer = _complete(llm_hub, first, _canonical(llm_hub))
    pulls = llm_hub.stand_in.model_requests
    with _node(llm_hub, home) as again:
        assert httpx.get(f"{again.url}/healthz").json()["loaded"] == []
        repeated = _complete(llm_hub, again, _canonical(llm_hub))
        assert again.node_id == first.node_id  # the same key, from the same home
        assert _opened(again, repeated)[1] == _opened(first, answer)[1]
    assert llm_hub.stand_in.model_requests == pulls  # re-validated from disk, not pulled


def test_serve_node_takes_the_llm_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import veriml.node
    from veriml.cli import app
    from veriml.node import NodeConfig

    started: list[NodeConfig] = []
    monkeypatch.setattr(veriml.node, "serve_node", started.append)
    operator = ["--operator-key", str(tmp_path / "operator.key")]
    operator += ["--coordinator-key", str(tmp_path / "coordinator.pub")]
    base = ["node", "serve", "--coordinator", "http://127.0.0.1:1", "--home", str(tmp_path)]
    runner = CliRunner()
    done = runner.invoke(app, [*base, *operator, "--llm-threads", "2", "--llm-ctx", "4096"])
    assert done.exit_code == 0, done.output
    assert (started[0].llm_threads, started[0].llm_ctx) == (2, 4096)
    assert runner.invoke(app, [*base, *operator, "--llm-threads", "0"]).exit_code == 2


def test_a_streamed_job_that_fails_in_the_worker_ends_with_an_error_line(
    llm_hub: LLMHub, node: RunningNode
) -> None:
    body = _body(llm_hub, node, _canonical(llm_hub, max_tokens=4096))  # over the 2048 context
    with httpx.stream(
        "POST", f"{node.url}/v1/jobs", json=body, headers={"Accept": "application/x-ndjson"}
    ) as response:
        assert response.status_code == 200  # the run had started: the error is in the stream
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert len(lines) == 1
    error = lines[0]["error"]
    assert error["status"] == 413
    assert error["limit"] == 2048
    assert error["type"].startswith("https://veriml.dev/problems/")


def test_a_relay_node_signs_what_its_upstream_answered_as_attested_relay(
    llm_hub: LLMHub, tmp_path: Path
) -> None:
    from fastapi import FastAPI

    upstream = FastAPI()
    asked: list[dict[str, Any]] = []

    @upstream.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        asked.append(body)
        message = {"role": "assistant", "content": "Red, green, blue."}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}

    stand_in = Digest.of(b"relay:tiny")  # what the coordinator binds relayed requests to
    canonical = canonical_request(
        "chat.completion",
        stand_in,
        {"messages": MESSAGES, "temperature": 0, "max_tokens": 8},
        seed=3,
    )
    with (
        serve(upstream) as upstream_url,
        _node(
            llm_hub, tmp_path / "relay", relay_url=upstream_url + "/v1", relay_model="tiny"
        ) as relay,
    ):
        job = Job(
            job_id=str(uuid.uuid4()),
            node_id=relay.node_id,
            request_id="r-relay",
            model=stand_in,
            inputs={},
            policy="none",
            issued_at=format_time(dt.datetime.now(dt.UTC)),
            expires_at=format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)),
            kind="completion",
            request=canonical,
        )
        body = {"job": job.sign(llm_hub.coordinator_key).to_json(), "request": canonical}
        response = _post(relay, body)
        assert response.status_code == 200, response.text
        registered = llm_hub.stand_in.registrations
        wait_until(lambda: any(d.node_id == relay.node_id for d in registered))
        descriptor = next(d for d in registered if d.node_id == relay.node_id)
    answer = response.json()
    assert answer["content"] == "Red, green, blue."
    predicate, _ = _opened(relay, answer)
    assert predicate.trust == "attested-relay"
    assert predicate.model_digest is None
    assert predicate.upstream == {"upstream": upstream_url + "/v1", "name": "tiny"}
    assert predicate.request_digest == canonical_digest(canonical)
    assert asked[0]["model"] == "tiny"
    assert asked[0]["messages"] == MESSAGES
    assert (descriptor.engines, descriptor.models) == (("relay",), ("relay:tiny",))
