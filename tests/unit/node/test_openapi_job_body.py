"""The node's OpenAPI document describes the job bodies the coordinator really sends.

``POST /v1/jobs`` reads raw bytes, so the documented body is held to the coordinator's own
code: an ONNX job as :func:`veriml.coordinator.dispatch.dispatch` posts it (recorded on an
httpx mock transport), and LLM jobs (completion, prefill) in the shape the completion service
posts; the schema refuses what the node refuses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import numpy as np
import pytest
from fastapi.testclient import TestClient

from veriml.coordinator.nodes.dispatch import JobSpec, dispatch
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.errors import Error
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.core.timestamps import format_time
from veriml.node import NodeConfig, create_node_app
from veriml.protocol.jobs import Job
from veriml.protocol.openai_requests import canonical_request


@pytest.fixture(scope="module")
def job_schema(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("node")
    operator = home / "operator.key"
    generate_key("ed25519").save(operator)
    coordinator = home / "coordinator.pub"
    coordinator.write_bytes(generate_key("ed25519").public.to_pem())
    config = NodeConfig(
        coordinator_url="http://127.0.0.1:9",
        key_path=home / "node.key",
        operator_key=operator,
        home=home,
        coordinator_key=coordinator,
    )
    document = TestClient(create_node_app(config)).get("/openapi.json").json()
    body = document["paths"]["/v1/jobs"]["post"]["requestBody"]
    assert body["required"]
    schema = body["content"]["application/json"]["schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": document["components"]})


def _dispatched_body(tmp_path: Path) -> dict[str, Any]:
    """What ``dispatch`` posts to a node, recorded."""
    sent: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(400, json={"title": "Bad Request", "status": 400, "detail": "x"})

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    spec = JobSpec(
        request_id=str(uuid.uuid4()),
        model=Digest.of(b"model"),
        input_digests={"x": tensor_digest(x)},
        inputs_json={"x": tensor_to_json(x)},
        policy="quorum:2/2",
        trace=True,
        retain_until="2030-01-01T00:00:00Z",
    )
    node = Candidate(
        node_id="sha256:" + "ab" * 32,
        operator="sha256:" + "cd" * 32,
        endpoint="http://node.test",
        public_key="",
        log_index=0,
        last_seen=0.0,
    )

    async def post() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
            with pytest.raises(Error):
                await dispatch(http, node, spec, generate_key("ed25519"), timeout=5)

    asyncio.run(post())
    assert len(sent) == 1
    body: dict[str, Any] = json.loads(sent[0].content)
    return body


def _llm_job(kind: str, canonical: dict[str, Any]) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    job = Job(
        job_id=str(uuid.uuid4()),
        node_id="sha256:" + "ab" * 32,
        request_id=str(uuid.uuid4()),
        model=Digest.of(b"gguf"),
        inputs={},
        policy="prefill",
        issued_at=format_time(now),
        expires_at=format_time(now + dt.timedelta(seconds=60)),
        kind=kind,
        request=canonical,
    )
    return {"job": job.sign(generate_key("ed25519")).to_json(), "request": canonical}


def test_the_jobs_the_coordinator_sends_validate_against_the_nodes_schema(
    job_schema: Any, tmp_path: Path
) -> None:
    assert job_schema.is_valid(_dispatched_body(tmp_path))
    canonical = canonical_request(
        "chat.completion",
        Digest.of(b"gguf"),
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        seed=1,
    )
    assert job_schema.is_valid(_llm_job("completion", canonical))
    receipt = _llm_job("completion", canonical)["job"]
    prefill = _llm_job("prefill", canonical) | {
        "completion": {"receipt": receipt, "prompt_tokens": [1, 2], "completion_tokens": [3]}
    }
    assert job_schema.is_valid(prefill)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"inputs": {}},
        {
            "job": {
                "payloadType": "application/vnd.veriml.job+json",
                "payload": "",
                "signatures": [],
            }
        },
        {"job": "envelope"},
        {"job": {"payloadType": "text/plain", "payload": "", "signatures": [{"sig": ""}]}},
    ],
)
def test_the_nodes_schema_refuses_what_the_node_refuses(job_schema: Any, body: Any) -> None:
    assert not job_schema.is_valid(body)
