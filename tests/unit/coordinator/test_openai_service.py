"""The completion service end to end on loopback, with nodes that sign real completion receipts
over made-up tokens: real log, real database, real HTTP (NDJSON streams) to the nodes.

Each fake node does what a node does (``Job.open`` with the request, a canonical request
check, tokens streamed, a receipt signed by its key) with one behaviour a real node can show:
honest, different tokens under a valid signature, a receipt signed by a key that is not the
registered one, refusing an overlong prompt, or checking another node's completion (prefill),
honestly or not. The tokens depend on the seed and the request only, as with a deterministic
engine, so honest nodes agree bit for bit. The real model runs in
``tests/integration/test_openai_api.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from _draws import EPOCH, request_drawn_first
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from _coordinator import running_coordinator
from _servers import serve
from veriml.coordinator.auth import sign_request
from veriml.coordinator.db import tables as db
from veriml.coordinator.llm.errors import NodeRefusedError, openai_error
from veriml.coordinator.llm.service import CompletionOptions, CompletionService, LLMModel
from veriml.coordinator.llm.transport import TokenPiece, TokenSink
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    CompletionPredicate,
    completion_output_digest,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import ConflictError, NodeUnavailableError, NotFoundError
from veriml.core.keys import SigningKey, VerifyingKey, generate_key
from veriml.core.receipt import utc_now
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.jobs import Job
from veriml.protocol.openai_requests import check_canonical
from veriml.protocol.prefill_check import PrefillCheck, sign_prefill_check
from veriml.tlog import NoteVerifier, leaf_hash, open_checkpoint, verify_inclusion
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.verify.policy import Verdict

MODEL = Digest.of(b"a gguf model")
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6}


def fake_generation(request: dict[str, Any], shift: int = 0) -> tuple[list[int], list[int], str]:
    """Prompt ids, completion ids and content: a function of the request and seed only."""
    source = request.get("messages") or request.get("prompt")
    prompt = [b % 97 for b in canonical_digest(source).raw[:5]]
    seed = sampling_of(request).seed
    tokens = [(seed + 7 * i + shift) % 500 for i in range(request["max_tokens"])]
    return prompt, tokens, "".join(f" w{t}" for t in tokens)


@dataclass
class FakeNode:
    """A node: its key, operator, behaviour and the jobs it was sent."""

    operator: str
    behaviour: str = "honest"
    key: SigningKey = field(default_factory=lambda: generate_key("ed25519"))
    jobs: list[Job] = field(default_factory=list)
    url: str = ""
    active: int = 0

    @property
    def node_id(self) -> str:
        return self.key.key_id

    def candidate(self) -> Candidate:
        return Candidate(
            node_id=self.node_id,
            operator=self.operator,
            endpoint=self.url,
            public_key=self.key.public.to_pem().decode(),
            log_index=7,
            last_seen=time.time(),
            active=self.active,
        )

    def complete(self, job: Job, request: dict[str, Any]) -> tuple[dict[str, Any], list[int]]:
        prompt, tokens, content = fake_generation(request, 1 if self.behaviour == "wrong" else 0)
        finish = "length"
        output = completion_output_digest(
            content=content, tool_calls=[], tokens=tokens, finish_reason=finish
        )
        now = utc_now()
        predicate = CompletionPredicate(
            request_id=job.request_id,
            request_digest=canonical_digest(request),
            model_digest=job.model,
            model_files=None,
            prompt_count=len(prompt),
            prompt_digest=token_digest(prompt),
            completion_count=len(tokens),
            finish_reason=finish,
            sampling=sampling_of(request),
            runtime={"engine": "fake"},
            node_id=self.node_id,
            policy=job.policy,
            trust="reexecutable",
            spot=job.spot,
            started=now,
            finished=now,
        )
        signer = generate_key("ed25519") if self.behaviour == "forged" else self.key
        result = {
            "receipt": sign_completion(output, predicate, signer).to_json(),
            "content": content,
            "tool_calls": [],
            "finish_reason": finish,
            "prompt_tokens": prompt,
            "completion_tokens": tokens,
        }
        return result, tokens

    def check(self, job: Job, request: dict[str, Any], completion: dict[str, Any]) -> Any:
        receipt = Envelope.from_json(completion["receipt"])
        _, honest_tokens, _ = fake_generation(request)
        accepted = completion["completion_tokens"] == honest_tokens
        report = {
            "accepted": accepted,
            "checked": len(completion["completion_tokens"]),
            "first_failure": None if accepted else 0,
            "reason": None if accepted else "token 0 is not the sampler's choice",
        }
        now = utc_now()
        check = PrefillCheck(
            receipt=Digest.of(receipt.payload),
            report=report,
            model=job.model,
            runtime={"engine": "fake"},
            node_id=self.node_id,
            request_id=job.request_id,
            started=now,
            finished=now,
        )
        return {"receipt": sign_prefill_check(check, self.key).to_json()}


def node_app(node: FakeNode, coordinator: VerifyingKey) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/jobs")
    async def run_job(request: Request) -> Response:
        body = await request.json()
        job = Job.open(
            Envelope.from_json(body["job"]),
            coordinator,
            node_id=node.node_id,
            request=body.get("request"),
        )
        canonical = check_canonical(body["request"])
        node.jobs.append(job)
        if job.kind == "prefill":
            return JSONResponse(node.check(job, canonical, body["completion"]))
        if node.behaviour == "fails-mid-stream":

            async def failing() -> AsyncIterator[bytes]:
                yield b'{"token": 1, "text": " w1"}\n'
                problem = {"status": 500, "detail": "llama.cpp decode failed"}
                yield (json.dumps({"error": problem}) + "\n").encode()

            return StreamingResponse(failing(), media_type="application/x-ndjson")
        if node.behaviour == "overflow":
            problem = {"status": 413, "detail": "prompt is 9000 tokens, context 2048"}
            problem |= {"error": "LimitExceededError", "param": "messages"}
            return JSONResponse(problem, status_code=413)
        result, tokens = node.complete(job, canonical)
        if "ndjson" not in request.headers.get("accept", ""):
            return JSONResponse(result)

        async def lines() -> AsyncIterator[bytes]:
            for token in tokens:
                yield (json.dumps({"token": token, "text": f" w{token}"}) + "\n").encode()
                await asyncio.sleep(0)
            yield (json.dumps({"result": result}) + "\n").encode()

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    return app


@dataclass
class Network:
    service: CompletionService
    log: Log
    nodes: list[FakeNode]


def run_network(
    tmp_path: Path,
    nodes: list[FakeNode],
    body: Callable[[Network], Coroutine[Any, Any, Any]],
) -> Any:
    coordinator_key = generate_key("ed25519")
    engine = db.open_engine(f"sqlite:///{tmp_path / 'coordinator.db'}")
    signer = NoteSigner("veriml.test/completions", generate_key("ed25519"))
    log = Log.open(
        f"sqlite:///{tmp_path / 'coordinator.db'}", signer, options=LogOptions(batch_interval=0)
    )

    def resolve(ref: str) -> LLMModel:
        if ref in ("tiny", MODEL.to_text()):
            return LLMModel(MODEL, context_length=64)
        raise NotFoundError("no such model", model=ref)

    with contextlib.ExitStack() as stack:
        for node in nodes:
            node.url = stack.enter_context(serve(node_app(node, coordinator_key.public)))
        stack.callback(engine.dispose)
        stack.callback(log.close)

        async def main() -> Any:
            async with httpx.AsyncClient() as http:
                service = CompletionService(
                    engine=engine,
                    log=log,
                    key=coordinator_key,
                    http=http,
                    resolve_model=resolve,
                    list_nodes=lambda digest: [n.candidate() for n in nodes],
                    options=CompletionOptions(job_timeout=10),
                    beacon=lambda: EPOCH,
                )
                return await body(Network(service, log, nodes))

        return asyncio.run(main())


def check_logged(network: Network, veriml: dict[str, Any]) -> InferenceEntry:
    """The veriml object's log member proves its entry, rebuilt from the object, in the log."""
    entry = InferenceEntry(
        request_id=veriml["id"],
        request_digest=canonical_digest(veriml["canonical_request"]),
        model=Digest.from_text(veriml["model"]),
        policy=veriml["policy"],
        receipts=tuple(Envelope.from_json(r) for r in veriml["receipts"]),
        verdict=Verdict.from_json(veriml["verdict"]),
        extra=veriml["request"],
    )
    log = veriml["log"]
    checkpoint, _ = open_checkpoint(
        log["checkpoint"].encode(), NoteVerifier.from_vkey(network.log.vkey)
    )
    proof = [base64.b64decode(h) for h in log["inclusion_proof"]]
    verify_inclusion(
        leaf_hash(entry.to_bytes()), log["index"], checkpoint.size, proof, checkpoint.root_hash
    )
    # The ledger fold parses every entry: this one must read back as what was logged.
    logged = parse_entry(network.log.entries(log["index"], log["index"] + 1)[0])
    assert logged == entry
    return entry


def test_a_none_chat_is_verified_streamed_logged_once_and_proved(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a")]
    streamed: list[TokenPiece] = []

    async def body(net: Network) -> None:
        answer = await net.service.create("chat.completion", CHAT, on_token=streamed.append)
        veriml = dict(answer.veriml)
        entry = check_logged(net, veriml)
        assert entry.verdict.outcome == "accepted"
        assert entry.extra == {"kind": "chat.completion"}
        _, tokens, content = fake_generation(veriml["canonical_request"])
        assert answer.answer.content == content
        assert veriml["completion_tokens"] == tokens
        assert [p.token for p in streamed] == tokens
        assert "".join(p.text for p in streamed) == content
        assert veriml["nodes"] == [{"id": nodes[0].node_id, "log_index": 7}]
        # The coordinator chose the seed, and the node signed the request carrying it.
        assert isinstance(veriml["canonical_request"]["seed"], int)
        assert nodes[0].jobs[0].request_digest == entry.request_digest

    run_network(tmp_path, nodes, body)


def test_a_quorum_samples_with_one_seed_and_outvotes_different_tokens(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b", "wrong"), FakeNode("op-c")]

    async def body(net: Network) -> None:
        answer = await net.service.create("chat.completion", CHAT, policy="quorum:3/2")
        entry = check_logged(net, dict(answer.veriml))
        assert entry.verdict.outcome == "accepted"
        assert set(entry.verdict.agreeing) == {nodes[0].node_id, nodes[2].node_id}
        assert len(entry.receipts) == 3
        assert len({n.jobs[0].request_digest for n in nodes}) == 1
        assert len({n.jobs[0].job_id for n in nodes}) == 3

    run_network(tmp_path, nodes, body)


def test_a_quorum_that_is_not_met_is_still_logged_as_rejected(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b", "wrong")]

    async def body(net: Network) -> None:
        answer = await net.service.create("chat.completion", CHAT, policy="quorum:2/2")
        assert check_logged(net, dict(answer.veriml)).verdict.outcome == "rejected"

    run_network(tmp_path, nodes, body)


def test_a_forged_receipt_is_replaced_by_another_nodes_answer(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a", "forged"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        # Both are asked (quorum:2/1); the forger's answer never counts.
        result = await net.service.create("chat.completion", CHAT, policy="quorum:2/1")
        entry = check_logged(net, dict(result.veriml))
        assert entry.verdict.agreeing == (nodes[1].node_id,)
        assert [Envelope.from_json(r) for r in result.veriml["receipts"]] == list(entry.receipts)
        assert len(entry.receipts) == 1

    run_network(tmp_path, nodes, body)


def test_a_node_refusing_an_overlong_prompt_is_the_clients_400(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a", "overflow")]

    async def body(net: Network) -> None:
        with pytest.raises(NodeRefusedError) as caught:
            await net.service.create("chat.completion", CHAT)
        status, error = openai_error(caught.value)
        assert (status, error["error"]["code"], error["error"]["param"]) == (
            400,
            "context_length_exceeded",
            "messages",
        )
        assert net.log.size == 0  # nothing logged

    run_network(tmp_path, nodes, body)


def test_no_llm_node_is_a_503_before_anything_runs(tmp_path: Path) -> None:
    async def body(net: Network) -> None:
        with pytest.raises(NodeUnavailableError):
            await net.service.prepare("chat.completion", CHAT, policy="quorum:2/2")

    run_network(tmp_path, [FakeNode("op-a")], body)


def test_prefill_logs_the_completion_and_the_checkers_signed_report(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        answer = await net.service.create("chat.completion", CHAT, policy="prefill")
        entry = check_logged(net, dict(answer.veriml))
        assert entry.verdict.outcome == "accepted"
        assert len(entry.receipts) == 2
        generator = answer.veriml["nodes"][0]["id"]
        assert entry.verdict.agreeing[0] == generator
        kinds = sorted(j.kind for n in nodes for j in n.jobs)
        assert kinds == ["completion", "prefill"]

    run_network(tmp_path, nodes, body)


def test_prefill_rejects_tokens_the_checker_does_not_accept(tmp_path: Path) -> None:
    # The generator is wrong; the honest checker's one batched pass refuses its tokens.
    nodes = [FakeNode("op-a", "wrong"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        # A request whose draw makes the wrong node the generator.
        request_id = request_drawn_first(nodes[0].node_id, [n.candidate() for n in nodes])
        answer = await net.service.create(
            "chat.completion", CHAT, policy="prefill", request_id=request_id
        )
        entry = check_logged(net, dict(answer.veriml))
        assert answer.veriml["nodes"][0]["id"] == nodes[0].node_id
        assert (entry.verdict.outcome, entry.verdict.agreeing) == ("rejected", ())
        assert len(entry.receipts) == 2  # the refusal is logged with the completion

    run_network(tmp_path, nodes, body)


def test_spot_1_always_runs_a_checker_of_another_operator(tmp_path: Path) -> None:
    nodes = [FakeNode("op-a"), FakeNode("op-b")]

    async def body(net: Network) -> None:
        answer = await net.service.create("chat.completion", CHAT, policy="spot:1")
        entry = check_logged(net, dict(answer.veriml))
        assert entry.verdict.outcome == "accepted"
        assert entry.verdict.spot is not None
        assert entry.verdict.spot.checked
        assert len(entry.verdict.agreeing) == 2
        commitments = {n.jobs[0].spot for n in nodes}
        assert len(commitments) == 1
        assert None not in commitments

    run_network(tmp_path, nodes, body)


# -- the routes, with these nodes behind a real coordinator ---------------------------------------


@pytest.fixture
def coordinator(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, FastAPI, list[FakeNode]]]:
    """A coordinator whose completion service runs on two fake nodes of distinct operators
    (``indirect`` parameter: the coordinator's settings)."""
    nodes = [FakeNode("op-a"), FakeNode("op-b")]
    settings = getattr(request, "param", {})
    with contextlib.ExitStack() as stack:
        url, app = stack.enter_context(running_coordinator(tmp_path / "home", **settings))
        for node in nodes:
            node.url = stack.enter_context(
                serve(node_app(node, app.state.coordinator.coordinator_key.public))
            )
        state = app.state.coordinator
        app.state.coordinator = dataclasses.replace(
            state,
            completions=CompletionService(
                engine=state.engine,
                log=state.log,
                key=state.coordinator_key,
                http=state.http,
                resolve_model=lambda ref: LLMModel(MODEL, 64),
                list_nodes=lambda digest: [n.candidate() for n in nodes],
                ledger=state.ledger,
            ),
        )
        yield url, app, nodes


def _sse_events(text: str) -> list[tuple[str | None, str]]:
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        event = None
        data = ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
        events.append((event, data))
    return events


def test_chat_over_http_answers_openais_shape_with_the_veriml_member(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    response = httpx.post(url + "/v1/chat/completions", json=CHAT, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["id"] == "chatcmpl-" + body["veriml"]["id"]
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}
    receipt = json.loads(base64.b64decode(response.headers["X-Veriml-Receipt"]))
    assert receipt == body["veriml"]["receipts"][0]
    assert body["veriml"]["log"]["index"] >= 0


def test_the_policy_header_and_body_member_select_the_policy(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    by_header = httpx.post(
        url + "/v1/chat/completions",
        json=CHAT,
        headers={"X-Veriml-Policy": "quorum:2/2"},
        timeout=30,
    ).json()
    by_member = httpx.post(
        url + "/v1/chat/completions",
        json=CHAT | {"veriml": {"policy": "quorum:2/2"}},
        timeout=30,
    ).json()
    for body in (by_header, by_member):
        assert body["veriml"]["policy"] == "quorum:2/2"
        assert body["veriml"]["verdict"]["outcome"] == "accepted"
        assert len(body["veriml"]["receipts"]) == 2
    conflicting = httpx.post(
        url + "/v1/chat/completions",
        json=CHAT | {"veriml": {"policy": "none"}},
        headers={"X-Veriml-Policy": "quorum:2/2"},
        timeout=30,
    )
    assert conflicting.status_code == 400
    assert conflicting.json()["error"]["param"] == "veriml.policy"


def test_a_streamed_chat_is_sse_chunks_then_the_veriml_event_then_done(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    request = CHAT | {"stream": True, "stream_options": {"include_usage": True}}
    response = httpx.post(url + "/v1/chat/completions", json=request, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse_events(response.text)
    assert events[-1] == (None, "[DONE]")
    assert events[-2][0] == "veriml"
    final = json.loads(events[-2][1])
    assert final["choices"] == []
    assert final["object"] == "chat.completion.chunk"
    veriml = final["veriml"]
    chunks = [json.loads(data) for event, data in events[:-2]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    _, tokens, content = fake_generation(veriml["canonical_request"])
    assert text == content
    assert veriml["completion_tokens"] == tokens
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "length"
    assert set(finish[:-1]) == {None}
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


def test_a_streamed_text_completion_uses_text_completion_chunks(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    request = {"model": "tiny", "prompt": "Once", "max_tokens": 4, "stream": True}
    response = httpx.post(url + "/v1/completions", json=request, timeout=30)
    events = _sse_events(response.text)
    chunks = [json.loads(data) for event, data in events[:-2]]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert events[-2][0] == "veriml"


def test_the_official_openai_client_reads_the_answer_and_the_veriml_member(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=6,
        extra_body={"veriml": {"policy": "quorum:2/2"}},
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6
    veriml = (reply.model_extra or {})["veriml"]
    assert veriml["verdict"]["outcome"] == "accepted"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], temperature=5
        )
    assert caught.value.code is None
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]


def test_a_retried_idempotency_key_gets_the_stored_answer_without_running_again(
    tmp_path: Path,
) -> None:
    nodes = [FakeNode("op-a")]

    async def body(net: Network) -> None:
        first = await net.service.create("chat.completion", CHAT, request_id="retry-1")
        again = await net.service.create("chat.completion", CHAT, request_id="retry-1")
        assert again.veriml == first.veriml
        assert again.answer.content == first.answer.content
        assert again.answer.completion_tokens == first.answer.completion_tokens
        assert len(nodes[0].jobs) == 1
        assert net.log.size == 1
        with pytest.raises(ConflictError):
            await net.service.create(
                "chat.completion", CHAT | {"max_tokens": 3}, request_id="retry-1"
            )

    run_network(tmp_path, nodes, body)


def test_the_token_stream_follows_one_node_and_a_successor_resumes_where_it_stopped() -> None:
    seen: list[TokenPiece] = []
    sink = TokenSink(seen.append)
    sink.feed("a", TokenPiece(1, "x"))
    sink.feed("b", TokenPiece(1, "x"))  # another quorum member: not forwarded
    sink.feed("a", TokenPiece(2, "y"))
    sink.failed("a")
    for token, text in [(1, "x"), (2, "y"), (3, "z")]:
        sink.feed("b", TokenPiece(token, text))  # replays the same tokens from the start
    assert [p.text for p in seen] == ["x", "y", "z"]


def test_a_node_failing_after_the_stream_began_ends_it_with_an_openai_error(
    tmp_path: Path,
) -> None:
    nodes = [FakeNode("op-a", "fails-mid-stream")]
    with contextlib.ExitStack() as stack:
        url, app = stack.enter_context(running_coordinator(tmp_path / "home"))
        nodes[0].url = stack.enter_context(
            serve(node_app(nodes[0], app.state.coordinator.coordinator_key.public))
        )
        state = app.state.coordinator
        app.state.coordinator = dataclasses.replace(
            state,
            completions=CompletionService(
                engine=state.engine,
                log=state.log,
                key=state.coordinator_key,
                http=state.http,
                resolve_model=lambda ref: LLMModel(MODEL, 64),
                list_nodes=lambda digest: [n.candidate() for n in nodes],
                options=CompletionOptions(attempts_per_slot=1),
            ),
        )
        response = httpx.post(url + "/v1/chat/completions", json=CHAT | {"stream": True})
    events = _sse_events(response.text)
    assert response.status_code == 200
    assert json.loads(events[1][1])["choices"][0]["delta"]["content"] == " w1"
    error = json.loads(events[-1][1])["error"]
    assert error["code"] == "no_nodes_available"
    assert "[DONE]" not in response.text


@pytest.mark.parametrize("coordinator", [{"fee_per_job": 5}], indirect=True)
def test_a_coordinator_that_charges_fees_runs_nothing_without_a_payment_that_covers_them(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    """With fees (``fee_per_job`` > 0) a request must be signed and carry its signer's signed
    payment for this request (``X-Veriml-Payment``), from a balance that covers every node's
    fee: else 402 (PaymentRequiredError, docs/ledger.md), before any node runs."""
    url, _, nodes = coordinator
    client = generate_key("ed25519")
    raw = json.dumps(CHAT).encode()
    path = "/v1/chat/completions"
    signed = sign_request(client, "POST", url + path, raw, {"Content-Type": "application/json"})
    # Unsigned: nobody to charge, so not allowed (inference is free only by the rules).
    unsigned = httpx.post(url + path, json=CHAT, timeout=30)
    # Signed, without a payment.
    unpaid = httpx.post(url + path, content=raw, headers=signed, timeout=30)
    # Signed, with a payment that allows this request's one fee, from an empty balance.
    payment = LedgerRequest.signed(client, "payment", 5, request="req-unfunded")
    paid = sign_request(
        client,
        "POST",
        url + path,
        raw,
        {
            "Content-Type": "application/json",
            "Idempotency-Key": "req-unfunded",
            "X-Veriml-Payment": base64.b64encode(payment.to_bytes()).decode(),
        },
    )
    unfunded = httpx.post(url + path, content=raw, headers=paid, timeout=30)
    for refused, reason in (
        (unsigned, "attach a signed payment"),
        (unpaid, "attach a signed payment"),
        (unfunded, "balance does not cover the fees"),
    ):
        assert refused.status_code == 402, refused.text
        error = refused.json()["error"]
        assert error["code"] == "payment_required"
        assert reason in error["message"]
    assert [n.jobs for n in nodes] == [[], []]  # refused before any node ran
    tampered = httpx.post(url + path, content=raw.replace(b"Hi", b"Ho"), headers=signed)
    assert tampered.status_code == 403
    assert tampered.json()["error"]["code"] == "invalid_signature"


def test_a_signed_request_is_logged_with_its_clients_key_id(
    coordinator: tuple[str, FastAPI, list[FakeNode]],
) -> None:
    url, _, _ = coordinator
    client = generate_key("ed25519")
    raw = json.dumps(CHAT).encode()
    headers = sign_request(
        client, "POST", url + "/v1/chat/completions", raw, {"Content-Type": "application/json"}
    )
    response = httpx.post(url + "/v1/chat/completions", content=raw, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    request = response.json()["veriml"]["request"]
    assert request == {"kind": "chat.completion", "client": client.key_id}
