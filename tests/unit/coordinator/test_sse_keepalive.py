"""A stream keeps its connection busy while a check runs (issue 11 §5): when no token flows for
``sse_keepalive`` seconds (here 0.2 s) the coordinator sends a ``: keep-alive`` comment, so a
proxy that drops idle connections does not cut a stream waiting on a quorum or a prefill check,
and every client (the raw wire, the official ``openai`` package, veriml's SDK) skips it.

A real coordinator on loopback runs each request on two fake nodes (the ones of
``test_openai_service``) whose prefill check takes 1.5 s, one of which is also 1.5 s late to
everything: so every stream waits that long for a check with no token to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from test_openai_service import MODEL, FakeNode, fake_generation, node_app

from _coordinator import running_coordinator
from _servers import serve
from veriml.client import ChatStream, Client
from veriml.coordinator.llm.service import CompletionService, LLMModel
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.protocol.jobs import Job
from veriml.protocol.sse import SSEReader

KEEPALIVE = 0.2
SLOW = 1.5
MESSAGES = [{"role": "user", "content": "Hi"}]
CHAT = {"model": "tiny", "messages": MESSAGES, "max_tokens": 6, "stream": True}


class SlowChecker(FakeNode):
    """A node whose prefill check takes :data:`SLOW` seconds (a long prompt, a slow GPU)."""

    def check(self, job: Job, request: dict[str, Any], completion: dict[str, Any]) -> Any:
        time.sleep(SLOW)  # blocks this node's own server only
        return super().check(job, request, completion)


def late(app: FastAPI, seconds: float) -> Any:
    """``app`` answering every request ``seconds`` late (a loaded node)."""

    async def delayed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await asyncio.sleep(seconds)
        await app(scope, receive, send)

    return delayed


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[str]:
    nodes = [SlowChecker("op-a"), SlowChecker("op-b")]
    with contextlib.ExitStack() as stack:
        url, app = stack.enter_context(
            running_coordinator(tmp_path / "home", sse_keepalive=KEEPALIVE)
        )
        key = app.state.coordinator.coordinator_key.public
        nodes[0].url = stack.enter_context(serve(node_app(nodes[0], key)))
        nodes[1].url = stack.enter_context(serve(late(node_app(nodes[1], key), SLOW)))
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
        yield url


def _content(veriml: dict[str, Any]) -> str:
    return fake_generation(veriml["canonical_request"])[2]


def _delta(data: str) -> str:
    """The text a chat chunk adds."""
    choices = json.loads(data)["choices"]
    return str(choices[0]["delta"].get("content") or "") if choices else ""


@pytest.mark.parametrize("policy", ["quorum:2/2", "prefill"])
def test_a_stream_waiting_on_a_check_sends_keep_alives_and_is_never_silent_for_long(
    coordinator: str, policy: str
) -> None:
    lines: list[tuple[float, str]] = []
    with httpx.stream(
        "POST",
        coordinator + "/v1/chat/completions",
        json=CHAT,
        headers={"X-Veriml-Policy": policy},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            lines.append((time.monotonic(), line))
    keepalives = [t for t, line in lines if line == ": keep-alive"]
    # A second and a half of checking, one comment per 0.2 s of it.
    assert len(keepalives) >= 5
    # The comments are no events: the stream reads as chunks, the veriml event, [DONE].
    reader = SSEReader()
    timed = [(t, e) for t, line in lines if (e := reader.feed(line)) is not None]
    events = [e for _, e in timed]
    # Comments keep coming after tokens flowed: it is the check that is waited for.
    first_token = next(t for t, (_, data) in timed if _delta(data))
    assert any(t > first_token for t in keepalives)
    # Without them the connection would be silent for the whole check; with them, never for
    # much longer than the keep-alive interval.
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(lines)]
    assert max(gaps) < SLOW / 2
    assert events[-1] == ("", "[DONE]")
    assert events[-2][0] == "veriml"
    veriml = json.loads(events[-2][1])["veriml"]
    assert veriml["verdict"]["outcome"] == "accepted"
    assert veriml["policy"] == policy
    assert "".join(_delta(data) for _, data in events[:-2]) == _content(veriml)


def test_the_official_openai_client_reads_through_the_keep_alives(coordinator: str) -> None:
    client = openai.OpenAI(base_url=coordinator + "/v1", api_key="unused", max_retries=0)
    started = time.monotonic()
    stream = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=6,
        stream=True,
        extra_body={"veriml": {"policy": "prefill"}},
    )
    pieces, finish, veriml = [], None, None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        veriml = (chunk.model_extra or {}).get("veriml", veriml)
    client.close()
    assert time.monotonic() - started >= SLOW  # it did wait on the check
    assert veriml is not None
    assert veriml["verdict"]["outcome"] == "accepted"
    assert "".join(pieces) == _content(veriml)
    assert finish == "length"


def test_the_sdk_reads_through_the_keep_alives(coordinator: str) -> None:
    with Client(coordinator, verify=False, checkpoints=False) as client:
        stream = client.chat("tiny", MESSAGES, policy="quorum:2/2", stream=True, max_tokens=6)
        assert isinstance(stream, ChatStream)
        text = "".join(stream)
    result = stream.result
    assert result.content == text == _content(dict(result.response["veriml"]))
    assert result.finish_reason == "length"
    assert len(result.receipts) == 2
    assert all(isinstance(r, Envelope) for r in result.receipts)
    assert Digest.from_text(result.response["veriml"]["model"]) == MODEL
