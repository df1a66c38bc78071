"""schemathesis against the live coordinator and node, from their own ``/openapi.json``.

A coordinator with a registered model and a bonded, live node run on loopback. Every
operation of each document gets a bounded number of generated requests (derandomized, so CI
sees the same ones), and every answer must pass schemathesis's checks: no server error, a
documented status, a documented content type, the documented headers, a body that matches
its schema. Generated bodies only scratch the surface when a random signature header or a
random model name is refused first, so each case is also sent, at random:

- **unsigned**: without the RFC 9421 headers, so the body itself is read;
- **signed**: signed by a client key over the exact bytes sent;
- **on the model**: an inference names the registered model, so its inputs are checked; an
  OpenAI request names a relayed model, so its whole body is checked (no relay serves it);
- **as a signed job** (the node): with a job the coordinator's key signed for this node, on
  the registered model and the digests of the generated tensors, so the node runs the checks
  behind the signature.

Any failure is a bug in a server or in its document (tests/unit/coordinator/
test_openapi_findings.py keeps a regression test for each one found).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import veriml
from _operators import bond, operator_key
from _servers import free_port, serve
from veriml.coordinator.app import create_app
from veriml.coordinator.auth import sign_request
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.errors import Error
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app
from veriml.protocol.jobs import Job
from veriml.protocol.messages import format_time

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("VERIML_SCHEMATHESIS_EXAMPLES", "12"))
"""Generated requests per operation and way of sending it (about 40 s for both documents on
two cores); set ``VERIML_SCHEMATHESIS_EXAMPLES`` higher for a deeper run by hand."""
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPENAI = ("chat/completions", "completions", "embeddings")
SIGNATURE_HEADERS = frozenset({"x-veriml-key", "content-digest", "signature-input", "signature"})
# A model upload is a binary stream: sent as generated, like any octet stream.
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@dataclass(frozen=True)
class Live:
    coordinator: str
    node: str
    node_id: str
    model: str
    """The registered model's digest."""
    coordinator_key: SigningKey
    client_key: SigningKey


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    home = tmp / "home"
    settings_ = Settings(home=home, heartbeat_interval=1.0, job_timeout=5.0)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(create_app(settings_)))
        info = httpx.get(url + "/v1/info").json()
        pem = tmp / "coordinator.pub"
        pem.write_text(info["coordinator_key"])
        config = NodeConfig(
            coordinator_url=url,
            key_path=tmp / "node" / "node.key",
            operator_key=operator_key(tmp / "operator" / "operator.key"),
            home=tmp / "node",
            port=free_port(),
            coordinator_key=pem,
            heartbeat_interval=1.0,
        )
        bond(url, home, [config.operator_key] if config.operator_key else [])
        node = stack.enter_context(serve(create_node_app(config), port=config.port))
        node_id = httpx.get(node + "/v1/info").json()["node_id"]
        folder = write_example_folder(tmp / "mlp", build_mlp((8, 16, 3), seed=5), name="mlp")
        publisher = tmp / "publisher.key"
        generate_key("ec").save(publisher)
        with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
            model = client.publish(folder, publisher)["digest"]
        deadline = time.monotonic() + 20
        while not any(n["live"] for n in httpx.get(url + "/v1/nodes").json()["nodes"]):
            assert time.monotonic() < deadline, "the node did not come up"
            time.sleep(0.05)
        admin = load_private_key(home / "coordinator" / "coordinator.key", kind="ed25519")
        yield Live(url, node, node_id, model, admin, generate_key("ed25519"))


# -- sending a case ----------------------------------------------------------------------------

Send = Callable[[Any, str], httpx.Response | None]


def _post_json(case: Any, url: str, headers: dict[str, str], body: Any) -> httpx.Response:
    content = json.dumps(body).encode()
    headers = headers | {"content-type": "application/json"}
    return httpx.post(url + case.formatted_path, content=content, headers=headers, timeout=30)


def _plain_headers(case: Any) -> dict[str, str]:
    return {
        k: str(v) for k, v in (case.headers or {}).items() if k.lower() not in SIGNATURE_HEADERS
    }


def _without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in names}


def _coordinator_sender(live: Live) -> Send:
    def send(case: Any, how: str) -> httpx.Response | None:
        if case.method != "POST" or case.media_type != "application/json":
            return None
        body, headers = case.body, _plain_headers(case)
        if how == "on the model" and isinstance(body, dict) and "inputs" in body:
            # A policy and an epoch that are accepted, so the inputs are what is checked.
            body = body | {"model": live.model, "policy": "none"}
            headers = _without(headers, "x-veriml-epoch", "x-veriml-payment")
        elif how == "on the model" and isinstance(body, dict) and "model" in body:
            # A relayed model resolves without a hub entry: the OpenAI body is checked in
            # full, then no relay node serves it (503).
            body = body | {"model": "relay:upstream"}
            headers = _without(headers, "x-veriml-epoch", "x-veriml-payment", "x-veriml-policy")
        elif how not in ("unsigned", "signed"):
            return None
        if how == "signed":
            content = json.dumps(body).encode()
            target = live.coordinator + case.formatted_path
            headers = sign_request(live.client_key, "POST", target, content, headers)
        return _post_json(case, live.coordinator, headers, body)

    return send


def _signed_job(live: Live, inputs: dict[str, Any]) -> dict[str, Any]:
    digests = {}
    for name, tensor in inputs.items():
        try:
            digests[name] = tensor_digest(tensor_from_json(tensor))
        except Error:
            digests[name] = Digest.of(name.encode())
    now = dt.datetime.now(dt.UTC)
    job = Job(
        job_id=str(uuid.uuid4()),
        node_id=live.node_id,
        request_id=str(uuid.uuid4()),
        model=Digest.from_text(live.model),
        inputs=digests,
        policy="none",
        issued_at=format_time(now),
        expires_at=format_time(now + dt.timedelta(seconds=30)),
    )
    return job.sign(live.coordinator_key).to_json()


def _node_sender(live: Live) -> Send:
    def send(case: Any, how: str) -> httpx.Response | None:
        if how != "as a signed job" or case.path != "/v1/jobs" or not isinstance(case.body, dict):
            return None
        body = case.body | {"job": _signed_job(live, case.body.get("inputs") or {})}
        return _post_json(case, live.node, _plain_headers(case), body)

    return send


# -- the run -----------------------------------------------------------------------------------


def _exercise(
    url: str, send: Send, ways: Callable[[Any], list[str]]
) -> tuple[dict[str, str], dict[str, set[int]]]:
    """Run every operation of ``url``'s document, ``MAX_EXAMPLES`` cases for each of the
    ``ways`` of sending it; the failures found (by operation, way and check, with a curl
    command for the case) and the statuses each operation answered."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    failures: dict[str, str] = {}
    statuses: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        applicable = ways(operation)
        _run(
            url, send, operation, applicable, failures, statuses.setdefault(operation.label, set())
        )
    return failures, statuses


def _run(
    url: str,
    send: Send,
    operation: Any,
    ways: list[str],
    failures: dict[str, str],
    seen: set[int],
) -> None:
    @given(case=operation.as_strategy(), how=st.sampled_from(ways))
    @settings(
        max_examples=MAX_EXAMPLES * len(ways),
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any, how: str) -> None:
        response = send(case, how) or case.call(base_url=url, timeout=30)
        seen.add(response.status_code)
        checks = CHECKS if not _no_relay(response) else CHECKS[1:]
        try:
            case.validate_response(response, checks=checks)
        except (AssertionError, BaseExceptionGroup) as exc:
            found = exc.exceptions if isinstance(exc, BaseExceptionGroup) else [exc]
            for failure in found:
                title = str(failure).strip().splitlines()[0]
                key = f"{operation.label} [{how}] {type(failure).__name__}: {title}"
                failures.setdefault(key, f"{str(exc)[:1200]}\n{case.as_curl_command()}")

    check()


def _no_relay(response: httpx.Response | Any) -> bool:
    """The documented 503 of a relayed model no relay node serves (the test network has
    none): capacity, not a fault, and still held to the document's status and schema."""
    if response.status_code != 503 or "Retry-After" not in response.headers:
        return False
    try:
        return bool(response.json()["error"]["code"] == "no_nodes_available")
    except (ValueError, KeyError, TypeError):
        return False


def _report(failures: dict[str, str]) -> str:
    return "\n\n".join(f"{key}\n{detail}" for key, detail in failures.items())


def test_the_coordinator_answers_as_its_openapi_document_says(live: Live) -> None:
    def ways(operation: Any) -> list[str]:
        if any(body.media_type == "application/json" for body in operation.body):
            return ["as generated", "unsigned", "signed", "on the model"]
        return ["as generated"]

    failures, statuses = _exercise(live.coordinator, _coordinator_sender(live), ways)
    assert not failures, _report(failures)
    # Every operation was exercised, and the documented bodies reach past the first checks.
    assert len(statuses) >= 29, sorted(statuses)
    assert all(statuses.values()), statuses
    deeper = {200, 422, 502, 503}  # past the body's format, the signature and the model
    assert deeper & statuses["POST /v1/inferences"], statuses["POST /v1/inferences"]
    assert all(deeper & statuses[f"POST /v1/{path}"] for path in OPENAI), statuses


def test_the_node_answers_as_its_openapi_document_says(live: Live) -> None:
    def ways(operation: Any) -> list[str]:
        if operation.path == "/v1/jobs":
            return ["as generated", "as a signed job"]
        return ["as generated"]

    failures, statuses = _exercise(live.node, _node_sender(live), ways)
    assert not failures, _report(failures)
    assert {"POST /v1/jobs", "GET /v1/traces/{request_id}", "GET /healthz"} <= set(statuses)
    assert statuses["POST /v1/jobs"] - {400, 403}, statuses["POST /v1/jobs"]
