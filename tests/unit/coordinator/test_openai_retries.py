"""A chat answer lost on the way is asked for again and answered from storage (issue 11 §5):
the SDK sends its request id as ``Idempotency-Key`` and retries after the connection broke,
the coordinator answers the key from what it stored, and the nodes ran the request once.

The coordinator and fake nodes of ``test_openai_service``, and a proxy that loses the first
answer once the coordinator has begun sending it (after it ran, verified and logged)."""

from __future__ import annotations

from fastapi import FastAPI
from test_openai_service import FakeNode, coordinator, fake_generation  # noqa: F401

from _proxy import flaky_proxy
from veriml.client import ChatResult, Client
from veriml.ledger.entries import InferenceEntry, parse_entry

MESSAGES = [{"role": "user", "content": "Hi"}]


def test_a_lost_chat_answer_is_answered_again_from_storage_without_running_again(
    coordinator: tuple[str, FastAPI, list[FakeNode]],  # noqa: F811
) -> None:
    url, app, nodes = coordinator
    with (
        flaky_proxy(url, drop=b"POST /v1/chat/completions", when="answer") as proxy,
        Client(proxy.url, verify=False, checkpoints=False) as client,
    ):
        reply = client.chat("tiny", MESSAGES, policy="quorum:2/2", max_tokens=6)
    assert isinstance(reply, ChatResult)
    assert proxy.dropped == 1
    assert reply.content == fake_generation(dict(reply.response["veriml"]["canonical_request"]))[2]
    assert [len(n.jobs) for n in nodes] == [1, 1]  # each node ran it once
    log = app.state.coordinator.log
    entries = [parse_entry(raw) for raw in log.entries(0, log.size)]
    answers = [e for e in entries if isinstance(e, InferenceEntry)]
    assert [e.request_id for e in answers] == [reply.response["veriml"]["id"]]
