"""The relay engine (docs/llm.md, "Relay engine") in front of a real OpenAI-compatible
upstream: a second veriml network serving SmolLM2-135M. What the relay signs is exactly what
the upstream answered, under ``trust: attested-relay`` with the upstream named and no model
digest; the upstream's key comes from the environment and never leaves the Authorization
header.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from _checks import ran
from _llm import make_smollm2_folder
from veriml.client import COMPLETION_CHECKS, ChatResult, ChatStream, Client, LocalNetwork
from veriml.core.canonical import canonical_digest
from veriml.core.completion import open_completion
from veriml.core.digest import Digest
from veriml.core.errors import ExecutionError, FormatError
from veriml.core.keys import generate_key
from veriml.node import NodeConfig
from veriml.node._relay import RELAY_TOKEN, RelayEngine
from veriml.protocol.openai_requests import canonical_request
from veriml.runtime.llm import TokenEvent

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "Name a colour."}]
BODY: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "max_tokens": 10, "seed": 5}
# The relay's canonical request names what the coordinator resolved; a relay has no digest of
# its own model, so any stand-in does for the engine on its own.
RELAYED = Digest.of(b"relay:smollm2")


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("upstream")
    tmp = tmp_path_factory.mktemp("upstream-model")
    with LocalNetwork(home, nodes=1, port=0, node_args=("--heartbeat", "1")) as network:
        folder = make_smollm2_folder(tmp / "smollm2")
        generate_key("ec").save(tmp / "publisher.key")
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, tmp / "publisher.key")
        yield network


@pytest.fixture
def relay(upstream: LocalNetwork) -> Iterator[RelayEngine]:
    engine = RelayEngine(upstream.url + "/v1", "smollm2", timeout=120)
    yield engine
    engine.close()


def test_the_relay_signs_what_the_upstream_answered_as_attested_relay(
    relay: RelayEngine, upstream: LocalNetwork
) -> None:
    key = generate_key()
    canonical = canonical_request("chat.completion", RELAYED, BODY)
    result = relay.run(canonical, key=key, request_id="r-1", policy="none")
    predicate, output = open_completion(result.receipt, key.public)
    assert predicate.trust == "attested-relay"
    assert predicate.model_digest is None
    assert predicate.upstream == {"upstream": upstream.url + "/v1", "name": "smollm2"}
    assert predicate.request_digest == canonical_digest(canonical)
    assert predicate.sampling is not None
    assert predicate.sampling.seed == BODY["seed"]
    assert output == result.output_digest
    # The upstream, asked directly (and verified there), says the same.
    with Client(upstream.url, log_vkey=upstream.log_vkey, timeout=120) as client:
        direct = client.chat("smollm2", **BODY)
    assert isinstance(direct, ChatResult)
    assert result.completion is not None
    assert result.completion.content == direct.content
    assert result.completion.finish_reason == direct.finish_reason
    # No token ids through a relay: none are claimed.
    assert result.completion.tokens == ()
    assert predicate.prompt_count == predicate.completion_count == 0


def test_a_relayed_stream_passes_each_piece_on_and_signs_the_whole(relay: RelayEngine) -> None:
    key = generate_key()
    canonical = canonical_request("chat.completion", RELAYED, BODY)
    events: list[TokenEvent] = []
    streamed = relay.run(
        canonical, key=key, request_id="r-2", policy="none", on_token=events.append
    )
    plain = relay.run(canonical, key=key, request_id="r-3", policy="none")
    assert streamed.completion is not None
    assert plain.completion is not None
    assert events
    assert {e.token for e in events} == {RELAY_TOKEN}
    assert "".join(e.text for e in events) == streamed.completion.content
    assert streamed.completion.content == plain.completion.content
    assert streamed.output_digest == plain.output_digest


def test_relayed_embeddings_sign_the_upstreams_vectors(relay: RelayEngine) -> None:
    key = generate_key()
    canonical = canonical_request("embedding", RELAYED, {"input": ["red", "blue"]})
    result = relay.run(canonical, key=key, request_id="r-4", policy="none")
    predicate, _ = open_completion(result.receipt, key.public)
    assert predicate.trust == "attested-relay"
    assert predicate.sampling is None
    assert len(result.embeddings) == 2
    assert all(v.dtype == np.float32 and v.ndim == 1 for v in result.embeddings)


@pytest.fixture(scope="module")
def relayed(
    upstream: LocalNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalNetwork]:
    """A second network whose one node relays to the upstream network's smollm2."""
    home = tmp_path_factory.mktemp("relaying")
    relay_args = ("--relay", upstream.url + "/v1", "--relay-model", "smollm2")
    with LocalNetwork(home, nodes=1, port=0, node_args=("--heartbeat", "1", *relay_args)) as net:
        yield net


def test_the_sdk_reports_a_relayed_answer_as_attested_relay(
    relayed: LocalNetwork, upstream: LocalNetwork
) -> None:
    with Client(relayed.url, log_vkey=relayed.log_vkey, timeout=120) as client:
        answer = client.chat("relay:smollm2", **BODY)
        assert isinstance(answer, ChatResult)
        stream = client.chat("relay:smollm2", stream=True, **BODY)
        assert isinstance(stream, ChatStream)
        text = "".join(stream)
    assert answer.trust == "attested-relay"
    # The network's evidence is checked too, but there is no model digest: no provenance.
    # The network evidence is checked, but a relay has no model digest: no provenance check.
    assert answer.verified == ran(COMPLETION_CHECKS, "evidence", "bonds", "epoch", "window")
    assert answer.notes[0].startswith("attested-relay")
    assert answer.completion_tokens == ()
    assert stream.result.trust == "attested-relay"
    assert text == stream.result.content == answer.content
    # What the relay signed is what the upstream answers, verified there as re-executable.
    with Client(upstream.url, log_vkey=upstream.log_vkey, timeout=120) as client:
        direct = client.chat("smollm2", **BODY)
    assert isinstance(direct, ChatResult)
    assert direct.trust == "reexecutable"
    assert answer.content == direct.content


def test_a_relayed_model_is_refused_the_prefill_policy(relayed: LocalNetwork) -> None:
    client = Client(relayed.url, log_vkey=relayed.log_vkey, timeout=120)
    with client, pytest.raises(FormatError) as caught:
        client.chat("relay:smollm2", policy="prefill", **BODY)
    assert caught.value.evidence["status"] == 400


def test_the_upstreams_refusal_is_a_format_error_naming_it(upstream: LocalNetwork) -> None:
    engine = RelayEngine(upstream.url + "/v1", "no-such-model")
    canonical = canonical_request("chat.completion", RELAYED, BODY)
    with pytest.raises(FormatError) as caught:
        engine.run(canonical, key=generate_key(), request_id="r-5", policy="none")
    engine.close()
    assert caught.value.evidence["status"] == 404


def _recording(seen: list[httpx.Request]) -> httpx.MockTransport:
    answer = {
        "choices": [
            {"index": 0, "message": {"content": "Blue."}, "finish_reason": "stop"},
        ]
    }

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    return httpx.MockTransport(handle)


def test_the_upstream_key_comes_from_the_environment_and_only_goes_upstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UPSTREAM_KEY", "sk-test-secret")
    seen: list[httpx.Request] = []
    engine = RelayEngine(
        "https://upstream.example/v1",
        "m",
        key_env="UPSTREAM_KEY",
        transport=_recording(seen),
    )
    key = generate_key()
    result = engine.run(
        canonical_request("chat.completion", RELAYED, BODY),
        key=key,
        request_id="r-6",
        policy="none",
    )
    assert seen[0].headers["Authorization"] == "Bearer sk-test-secret"
    assert str(seen[0].url) == "https://upstream.example/v1/chat/completions"
    sent = json.loads(seen[0].content)
    assert sent["model"] == "m"
    assert sent["messages"] == MESSAGES
    assert sent["seed"] == BODY["seed"]
    assert b"sk-test-secret" not in result.receipt.to_bytes()
    # Without the variable set, the relay refuses instead of calling unauthenticated.
    monkeypatch.delenv("UPSTREAM_KEY")
    with pytest.raises(ExecutionError) as caught:
        engine.run(
            canonical_request("chat.completion", RELAYED, BODY),
            key=key,
            request_id="r-7",
            policy="none",
        )
    assert "sk-test-secret" not in caught.value.diagnostics()
    engine.close()


def test_a_request_the_openai_api_cannot_carry_is_refused_not_dropped() -> None:
    engine = RelayEngine("https://upstream.example/v1", "m", transport=_recording([]))
    canonical = canonical_request("chat.completion", RELAYED, {**BODY, "top_k": 40})
    with pytest.raises(FormatError) as caught:
        engine.run(canonical, key=generate_key(), request_id="r-8", policy="none")
    assert caught.value.evidence["param"] == "top_k"
    engine.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"relay_url": "http://up.example/v1"}, "both"),
        ({"relay_model": "m"}, "both"),
        ({"relay_url": "ftp://up.example", "relay_model": "m"}, "http"),
        ({"relay_key_env": "KEY"}, "only used by a relay"),
    ],
)
def test_a_node_config_refuses_an_incomplete_relay(
    tmp_path: Path, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(FormatError) as caught:
        NodeConfig(
            coordinator_url="http://127.0.0.1:8700",
            key_path=tmp_path / "node.key",
            operator_key=tmp_path / "operator.key",
            home=tmp_path,
            **fields,  # type: ignore[arg-type]
        )
    assert message in caught.value.message


def test_serve_node_with_a_relay_but_no_model_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "veriml",
            "serve",
            "node",
            "--coordinator",
            "http://127.0.0.1:9",
            "--home",
            str(tmp_path),
            "--operator-key",
            str(tmp_path / "operator.key"),
            "--relay",
            "http://up.example/v1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error:")
    assert "relay" in done.stderr
