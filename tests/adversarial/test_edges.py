"""Red team: abuse of the coordinator's edges (docs/threat-model.md §8).

- **floods**: one address or one key sending faster than its route family allows gets 429
  with ``Retry-After``, before the route reads the body; naming somebody else's key in a
  forged signature spends nothing of theirs;
- **junk registrations**: anyone may register a node, and every registration is logged for
  good, so a 64 KiB descriptor of junk (or a path, a user or a query in its endpoint) is
  refused before it reaches the log, and registrations per address and per operator are
  bounded in time;
- **SSRF echo**: a node's endpoint may name any service the coordinator can reach; whatever
  answers there, the client learns its status and nothing of its body;
- **a rogue coordinator key**: a node takes its coordinator's key from its operator, or pins
  the first one it saw (explicitly, logged) and refuses any other afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from _coordinator import make_signed_model, running_coordinator
from _servers import free_port, serve
from veriml.client._retry import parse_retry_after
from veriml.coordinator.nodes.dispatch import MAX_PROBLEM_BYTES, PerHostTransport, node_problem
from veriml.core.errors import VerificationError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.timestamps import utc_now
from veriml.node._coordinator import learn_coordinator_key
from veriml.protocol.accounts import OperatorBinding
from veriml.protocol.messages import (
    MAX_DESCRIPTOR_BYTES,
    NODE_DESCRIPTOR_TYPE,
    Heartbeat,
    sign_message,
)

SECRET = "s3cr3t-internal-token-7f2a"
X = {"x": {"dtype": "float32", "shape": [1, 4], "data": [0.5, -1.0, 2.0, 0.25]}}


# -- helpers ------------------------------------------------------------------------------


def _descriptor(
    node: SigningKey, operator: SigningKey, endpoint: str = "http://127.0.0.1:9", **extra: Any
) -> dict[str, Any]:
    """A descriptor's members as a node would sign them (``extra`` added or replacing)."""
    binding = OperatorBinding.of(operator, node.key_id).sign(operator)
    message = {
        "type": "node-descriptor",
        "node_id": node.key_id,
        "public_key": node.public.to_pem().decode(),
        "operator": operator.key_id,
        "operator_binding": binding.to_json(),
        "endpoint": endpoint,
        "engines": ["onnxruntime"],
        "models": ["*"],
        "hardware": {"os": "linux"},
        "runtime": {"engine": "onnxruntime"},
        "issued_at": utc_now(),
        "nonce": secrets.token_hex(16),
    }
    return message | extra


def _register(url: str, node: SigningKey, message: dict[str, Any]) -> httpx.Response:
    envelope = sign_message(NODE_DESCRIPTOR_TYPE, message, node)
    return httpx.post(url + "/v1/nodes", json=envelope.to_json(), timeout=30)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def _throttled(response: httpx.Response, scope: str) -> dict[str, Any]:
    problem = _problem(response, 429)
    assert problem["scope"] == scope
    retry = response.headers["Retry-After"]
    assert retry.isdigit()
    assert 1 <= int(retry) <= 3600
    assert parse_retry_after(retry, now=0.0) == float(retry)  # what the SDK waits for
    return problem


# -- floods -------------------------------------------------------------------------------


def test_a_flood_from_one_address_is_429_with_retry_after_before_the_route_runs(
    tmp_path: Path,
) -> None:
    limits = {"rate_limit_inference": "3/minute", "rate_limit_local_factor": 1}
    with running_coordinator(tmp_path / "home", **limits) as (url, _):
        first = [httpx.post(url + "/v1/inferences", content=b"{") for _ in range(3)]
        assert [r.status_code for r in first] == [400, 400, 400]  # the route ran: bad JSON
        problem = _throttled(httpx.post(url + "/v1/inferences", content=b"{"), "address")
        assert (problem["family"], problem["limit"]) == ("inference", "3 per 1 minute")
        # Other families keep their own budgets, and reads are not limited.
        assert httpx.post(url + "/v1/ledger/stake", content=b"{").status_code == 400
        assert httpx.get(url + "/v1/info").status_code == 200
        # The OpenAI routes are the same family: the same address is out of budget there.
        _throttled(httpx.post(url + "/v1/chat/completions", content=b"{}"), "address")
        documented = httpx.get(url + "/openapi.json").json()["paths"]
        assert "429" in documented["/v1/inferences"]["post"]["responses"]


def test_a_key_is_limited_and_naming_it_in_a_forged_signature_spends_nothing(
    tmp_path: Path,
) -> None:
    # The address is exempt here, so only the publisher key's budget is at stake.
    limits = {"rate_limit_publish": "2/minute", "rate_limit_exempt": ("127.0.0.0/8",)}
    model = make_signed_model(tmp_path / "models", name="edges")
    with running_coordinator(tmp_path / "home", **limits) as (url, _):
        assert model.post(url).status_code == 201  # counted: 1
        body = model.tar()
        for _ in range(5):  # the publisher's key id, a signature that does not verify
            headers = model.upload_headers(body, url)
            headers["Signature"] = "veriml=:" + base64.b64encode(b"\0" * 64).decode() + ":"
            response = httpx.post(url + "/v1/models", content=body, headers=headers)
            assert _problem(response, 403)["check"] == "request-signature"
        assert model.post(url).status_code == 200  # counted: 2 (already registered)
        _throttled(model.post(url), "key")
        other = make_signed_model(tmp_path / "models", name="other-edges")
        assert other.post(url).status_code == 201  # another key has its own budget


# -- junk registrations -------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    with running_coordinator(tmp_path_factory.mktemp("edges") / "home") as running:
        yield running


@pytest.mark.parametrize(
    ("junk", "status"),
    [
        ({"runtime": {"junk": "x" * (60 << 10)}}, 413),  # the whole 64 KiB message
        ({"unknown": "x" * (MAX_DESCRIPTOR_BYTES + 1)}, 413),  # junk in a member nobody reads
        ({"hardware": {"junk": "x" * 5000}}, 413),
        ({"models": [f"sha256:{i:064x}" for i in range(65)]}, 400),
        ({"engines": ["onnxruntime"] * 9}, 400),
        ({"endpoint": "http://127.0.0.1:9/admin?x=1"}, 400),
        ({"endpoint": "http://user:pw@127.0.0.1:9"}, 400),
        ({"endpoint": "gopher://127.0.0.1:9"}, 400),
        ({"endpoint": "http://127.0.0.1:9/" + "a" * 300}, 400),
        ({"nonce": "n" * 129}, 400),
    ],
    ids=[
        "64KiB-runtime",
        "oversized-unknown-member",
        "5KB-hardware",
        "65-models",
        "9-engines",
        "endpoint-path-query",
        "endpoint-userinfo",
        "endpoint-scheme",
        "endpoint-length",
        "nonce-length",
    ],
)
def test_a_junk_registration_is_refused_before_it_reaches_the_log(
    registry: tuple[str, FastAPI], junk: dict[str, Any], status: int
) -> None:
    url, app = registry
    size = app.state.coordinator.log.size
    node, operator = generate_key(), generate_key()
    _problem(_register(url, node, _descriptor(node, operator, **junk)), status)
    assert app.state.coordinator.log.size == size
    assert node.key_id not in {n["node_id"] for n in httpx.get(url + "/v1/nodes").json()["nodes"]}


def test_an_endpoint_is_stored_as_the_plain_origin(registry: tuple[str, FastAPI]) -> None:
    url, _ = registry
    node, operator = generate_key(), generate_key()
    message = _descriptor(node, operator, endpoint="HTTP://Node.Example:8701/")
    assert _register(url, node, message).status_code == 201
    nodes = {n["node_id"]: n for n in httpx.get(url + "/v1/nodes").json()["nodes"]}
    assert nodes[node.key_id]["endpoint"] == "http://node.example:8701"


def test_registrations_from_one_address_are_bounded_in_time(tmp_path: Path) -> None:
    limits = {"rate_limit_register": "3/minute;10/hour", "rate_limit_local_factor": 1}
    with running_coordinator(tmp_path / "home", **limits) as (url, app):
        size = app.state.coordinator.log.size
        for _ in range(3):
            node, operator = generate_key(), generate_key()  # fresh keys cost nothing
            assert _register(url, node, _descriptor(node, operator)).status_code == 201
        node, operator = generate_key(), generate_key()
        _throttled(_register(url, node, _descriptor(node, operator)), "address")
        assert app.state.coordinator.log.size == size + 3


def test_one_operator_s_registrations_are_bounded_from_any_address(tmp_path: Path) -> None:
    limits = {"rate_limit_register": "3/minute", "rate_limit_exempt": ("127.0.0.0/8",)}
    operator = generate_key()
    with running_coordinator(tmp_path / "home", **limits) as (url, app):
        size = app.state.coordinator.log.size
        for _ in range(3):
            node = generate_key()
            assert _register(url, node, _descriptor(node, operator)).status_code == 201
        node = generate_key()
        _throttled(_register(url, node, _descriptor(node, operator)), "operator")
        assert app.state.coordinator.log.size == size + 3
        other = generate_key()  # another operator registers as before
        assert _register(url, other, _descriptor(other, generate_key())).status_code == 201


# -- SSRF echo ----------------------------------------------------------------------------


class Internal:
    """A service inside the coordinator's network that must stay private: it answers every
    request with ``SECRET`` in the way ``mode`` says, and counts what it was asked."""

    def __init__(self) -> None:
        self.mode = "500-text"
        self.hits: list[str] = []

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def anything(path: str, request: Request) -> Response:
            self.hits.append(f"{request.method} /{path}")
            if self.mode == "500-text":
                return Response(f"internal error, token={SECRET}", status_code=500)
            if self.mode == "400-problem":  # shaped like a veriml problem, to be believed
                body = {
                    "type": "https://veriml.dev/problems/bad-request",
                    "title": SECRET,
                    "status": 400,
                    "detail": SECRET,
                    "check": "job-time",
                    "param": f"x{SECRET}",  # not a member name: dropped
                    "code": SECRET + " " + SECRET,
                }
                return JSONResponse(body, status_code=400)
            if self.mode == "404-html":
                return Response(f"<h1>{SECRET}</h1>", status_code=404, media_type="text/html")
            if self.mode == "429-big":
                return Response(SECRET * 10_000, status_code=429, headers={"Retry-After": "7"})
            return JSONResponse({"outputs": SECRET, "receipt": {"payload": SECRET}})

        return app


@pytest.fixture(scope="module")
def internal() -> Iterator[tuple[str, Internal]]:
    service = Internal()
    with serve(service.app()) as url:
        yield url, service


MODES = ["500-text", "400-problem", "404-html", "429-big", "200-json"]


@pytest.mark.parametrize("mode", MODES)
def test_an_inference_routed_to_an_internal_service_shows_nothing_of_its_answer(
    tmp_path: Path, internal: tuple[str, Internal], mode: str
) -> None:
    internal_url, service = internal
    service.mode = mode
    model = make_signed_model(tmp_path / "models", name="ssrf")
    # min_stake 0: the attacker's operator need not be bonded for its node to get jobs.
    with running_coordinator(tmp_path / "home", min_stake=0) as (url, _):
        digest = model.post(url).json()["digest"]
        node, operator = generate_key(), generate_key()
        assert _register(url, node, _descriptor(node, operator, internal_url)).status_code == 201
        beat = Heartbeat(node_id=node.key_id, issued_at=utc_now()).sign(node)
        httpx.post(f"{url}/v1/nodes/{node.key_id}/heartbeat", json=beat.to_json())
        before = len(service.hits)
        response = httpx.post(
            url + "/v1/inferences", json={"model": digest, "inputs": X, "policy": "none"}
        )
    assert service.hits[before:], "the coordinator never called the internal service"
    assert response.status_code in (502, 503), response.text
    seen = response.text + json.dumps(dict(response.headers))
    assert SECRET not in seen
    assert "s3cr3t" not in seen


@pytest.mark.parametrize("mode", MODES)
def test_no_caller_of_the_coordinator_s_node_client_reads_an_error_body(
    internal: tuple[str, Internal], mode: str
) -> None:
    """Completions, dispute queries and jobs all read node answers through this transport."""
    internal_url, service = internal
    service.mode = mode

    async def ask() -> httpx.Response:
        transport = PerHostTransport(limits=httpx.Limits(max_connections=4))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(internal_url + "/v1/jobs", json={})

    response = asyncio.run(ask())
    if mode == "200-json":  # a success is the caller's to check (and it is no result)
        return
    assert SECRET not in response.text
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["detail"].startswith(f"node answered {response.status_code}")
    if mode == "400-problem":
        assert problem["check"] == "job-time"  # a short name from a veriml problem
        assert "param" not in problem
        assert "code" not in problem
    if mode == "429-big":
        assert response.headers["Retry-After"] == "7"  # what a busy node asks is kept


def test_a_summary_of_a_summary_is_the_summary() -> None:
    raw = json.dumps({"type": "https://veriml.dev/problems/x", "check": "job-time"}).encode()
    once = node_problem(409, raw)
    assert node_problem(409, json.dumps(once).encode()) == once
    assert node_problem(409, b"x" * (MAX_PROBLEM_BYTES + 1))["detail"] == (
        "node answered 409 Conflict"
    )


# -- a rogue coordinator key --------------------------------------------------------------


class InfoStandIn:
    """``GET /v1/info`` of a coordinator, whose key the test may swap for a rogue one."""

    def __init__(self) -> None:
        self.key = generate_key()

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/info")
        def info() -> dict[str, Any]:
            return {"coordinator_key": self.key.public.to_pem().decode()}

        return app


def test_a_node_pins_the_first_coordinator_key_it_trusts_and_refuses_another(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stand_in, pin = InfoStandIn(), tmp_path / "node" / "coordinator.pub"
    honest = stand_in.key

    async def learn(url: str) -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await learn_coordinator_key(url, pin, client=client)).key_id

    with serve(stand_in.app()) as url:
        with caplog.at_level(logging.WARNING, logger="veriml.node"):
            assert asyncio.run(learn(url)) == honest.key_id
        assert any(
            "on first use" in r.getMessage() and honest.key_id in r.getMessage()
            for r in caplog.records
        )
        assert pin.read_bytes() == honest.public.to_pem()
        assert asyncio.run(learn(url)) == honest.key_id  # the same key: nothing to say
        stand_in.key = generate_key()  # the URL now answers with a rogue key
        with pytest.raises(VerificationError) as caught:
            asyncio.run(learn(url))
    assert caught.value.check == "coordinator-key"
    assert caught.value.evidence["presented"] == stand_in.key.key_id
    assert pin.read_bytes() == honest.public.to_pem()  # the pin stands
    # Unreachable, the pin holds: the node refuses jobs any other key signs.
    assert asyncio.run(learn(f"http://127.0.0.1:{free_port()}")) == honest.key_id


def _serve_node(home: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    operator = home.parent / "operator.key"
    if not operator.exists():
        generate_key().save(operator)
    command = [
        *(sys.executable, "-m", "veriml", "node", "serve", "--coordinator", url),
        *("--home", str(home), "--operator-key", str(operator), "--port", str(free_port())),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_serve_node_without_the_coordinator_key_does_not_start(tmp_path: Path) -> None:
    done = _serve_node(tmp_path / "node", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert done.stderr.startswith("error:")
    assert "--coordinator-key" in done.stderr
    assert "--trust-coordinator-on-first-use" in done.stderr


def test_serve_node_refuses_a_coordinator_whose_key_changed_since_first_use(
    tmp_path: Path,
) -> None:
    stand_in, home = InfoStandIn(), tmp_path / "node"
    home.mkdir()
    (home / "coordinator.pub").write_bytes(generate_key().public.to_pem())  # learnt before
    with serve(stand_in.app()) as url:
        done = _serve_node(home, url, "--trust-coordinator-on-first-use")
    assert done.returncode == 1, done.stderr
    assert "another key" in done.stderr
    assert stand_in.key.key_id in done.stderr
