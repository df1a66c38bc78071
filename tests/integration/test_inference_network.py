"""Inference on a real network on loopback: the coordinator app, real nodes, real HTTP.

A coordinator (``create_app``) and three nodes (``create_node_app``, registered with it) run
on 127.0.0.1; a signed model is published through the hub; inferences go through
``POST /v1/inferences`` and their answers are checked the way a client checks them (receipt
signatures under the node keys, the inclusion proof against the signed checkpoint, and the
SDK's own verification). The coordinator runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import veriml
from _operators import bond, operator_key
from _servers import free_port, serve, start_process
from veriml.coordinator.app import create_app
from veriml.coordinator.auth import sign_request
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import VerifyingKey, generate_key
from veriml.core.tensors import tensor_from_json, tensor_to_json
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app
from veriml.runtime import Runner, RunResult
from veriml.tlog import LogClient, NoteVerifier, leaf_hash, open_checkpoint, verify_inclusion
from veriml.verify import verify_receipt
from veriml.verify.policy import Verdict

X = np.random.default_rng(11).standard_normal((3, 8)).astype(np.float32)
INPUTS = {"x": tensor_to_json(X)}


@dataclass
class Network:
    url: str
    home: Path
    info: dict[str, Any]
    model: ModelPackage
    node_keys: dict[str, VerifyingKey]


def _node_config(home: Path, url: str, name: str, coordinator_pem: Path) -> NodeConfig:
    return NodeConfig(
        coordinator_url=url,
        key_path=home / "nodes" / name / "node.key",
        operator_key=operator_key(home / "operators" / name / "operator.key"),
        home=home / "nodes" / name,
        port=free_port(),
        coordinator_key=coordinator_pem,
        concurrency=2,
        heartbeat_interval=1.0,
    )


def _wait_live(url: str, count: int, timeout: float = 30) -> dict[str, VerifyingKey]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = httpx.get(f"{url}/v1/nodes").json()["nodes"]
        live = {n["node_id"]: n for n in nodes if n["live"]}
        if len(live) >= count:
            return {k: VerifyingKey.from_pem(n["public_key"].encode()) for k, n in live.items()}
        assert time.monotonic() < deadline, f"only {len(live)} of {count} nodes came up"
        time.sleep(0.1)


@contextlib.contextmanager
def network(tmp_path: Path, db_url: str | None = None, *, nodes: int = 3) -> Iterator[Network]:
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        heartbeat_interval=1.0,
        job_timeout=10.0,
        **({"db_url": db_url} if db_url else {}),
    )
    folder = write_example_folder(tmp_path / "mlp", build_mlp((8, 16, 3), seed=5), name="mlp")
    publisher = tmp_path / "publisher.key"
    generate_key("ec").save(publisher)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(serve(create_app(settings)))
        info = httpx.get(f"{url}/v1/info").json()
        pem = tmp_path / "coordinator.pub"
        pem.write_text(info["coordinator_key"])
        configs = [_node_config(home, url, f"n{i}", pem) for i in range(nodes)]
        bond(url, home, [c.operator_key for c in configs if c.operator_key is not None])
        for config in configs:
            stack.enter_context(serve(create_node_app(config), port=config.port))
        keys = _wait_live(url, nodes)
        with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
            client.publish(folder, publisher)
        yield Network(url, home, info, ModelPackage.load(folder), keys)


def check_answer(net: Network, answer: dict[str, Any]) -> InferenceEntry:
    """What a client checks: each receipt under its node's key (the agreeing ones against the
    returned outputs), the logged entry rebuilt from the answer, and its inclusion proof
    against the checkpoint signed by the log key."""
    receipts = tuple(Envelope.from_json(r) for r in answer["receipts"])
    for receipt, node in zip(receipts, answer["nodes"], strict=True):
        key = net.node_keys[node["id"]]
        if node["id"] in answer["verdict"]["agreeing"]:
            doc = {"outputs": answer["outputs"], "receipt": receipt.to_json()}
            assert verify_receipt(doc, node_key=key).predicate.request_id == answer["id"]
        else:
            receipt.verify([key])
    predicate = RunResult.from_json({"outputs": {}, "receipt": answer["receipts"][0]}).predicate
    entry = InferenceEntry(
        request_id=answer["id"],
        request_digest=predicate.request_digest,
        model=Digest.from_text(answer["model"]),
        policy=answer["policy"],
        receipts=receipts,
        verdict=Verdict.from_json(answer["verdict"]),
        extra=answer.get("request", {}),
        state=answer["bonds"]["state"],  # the ledger state it was scheduled under
    )
    log = answer["log"]
    checkpoint, _ = open_checkpoint(
        log["checkpoint"].encode(), NoteVerifier.from_vkey(net.info["log_vkey"])
    )
    proof = [base64.b64decode(h) for h in log["inclusion_proof"]]
    verify_inclusion(
        leaf_hash(entry.to_bytes()), log["index"], checkpoint.size, proof, checkpoint.root_hash
    )
    return entry


def logged_requests(net: Network) -> list[str]:
    """Request ids of every inference entry in the log, read back through ``/log/`` tiles."""
    verifier = NoteVerifier.from_vkey(net.info["log_vkey"])
    with LogClient(f"{net.url}/log", verifier) as log:
        signed = log.checkpoint()
        entries = [log.entry(i, signed)[0] for i in range(signed.checkpoint.size)]
    return [e.request_id for e in map(parse_entry, entries) if isinstance(e, InferenceEntry)]


def expected_probs(net: Network) -> Any:
    return Runner.for_package(net.model).outputs({"x": X})["probs"]


def infer(net: Network, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{net.url}/v1/inferences", json=body, headers=headers, timeout=60)


def _happy_paths(net: Network) -> None:
    # none: one node, one receipt, accepted, logged once, retrievable as returned.
    response = infer(net, {"model": "mlp", "inputs": INPUTS, "policy": "none"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert check_answer(net, answer).verdict.outcome == "accepted"
    assert len(answer["receipts"]) == 1
    np.testing.assert_array_equal(tensor_from_json(answer["outputs"]["probs"]), expected_probs(net))
    # Read back with the capability the answer came with (the request is private).
    capability = {"X-Veriml-Capability": response.headers["X-Veriml-Capability"]}
    stored = httpx.get(f"{net.url}/v1/inferences/{answer['id']}", headers=capability)
    assert stored.status_code == 200
    assert stored.json() == answer

    # quorum:3/2 by digest and by name@version: three operators agree, bitwise.
    ref = net.model.digest.to_text()
    response = infer(net, {"model": ref, "inputs": INPUTS, "policy": "quorum:3/2"})
    assert response.status_code == 200, response.text
    quorum = response.json()
    entry = check_answer(net, quorum)
    assert entry.verdict.outcome == "accepted"
    assert len(set(entry.verdict.agreeing)) == 3 == len(net.node_keys)
    assert quorum["log"]["index"] > answer["log"]["index"]

    # The SDK verifies the same answers with only the pinned log key.
    with veriml.Client(net.url, log_vkey=net.info["log_vkey"]) as client:
        result = client.infer("mlp@1.0.0", {"x": X}, policy="quorum:3/2")
    np.testing.assert_array_equal(result.outputs["probs"], expected_probs(net))
    assert sorted(logged_requests(net)) == sorted([answer["id"], quorum["id"], result.id])


def _bad_requests(net: Network) -> None:
    def problem(response: httpx.Response, status: int) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        return dict(response.json())

    before = logged_requests(net)
    unknown = problem(infer(net, {"model": "no-such-model", "inputs": INPUTS}), 404)
    assert "no-such-model" in unknown["detail"]
    bad_tensor = {"x": {"dtype": "float32", "shape": [3, 8], "data": [0.5]}}
    assert "'x'" in problem(infer(net, {"model": "mlp", "inputs": bad_tensor}), 422)["detail"]
    wrong_shape = {"x": tensor_to_json(np.zeros((3, 9), np.float32))}
    assert "'x'" in problem(infer(net, {"model": "mlp", "inputs": wrong_shape}), 422)["detail"]
    assert problem(infer(net, {"model": "mlp", "inputs": INPUTS, "policy": "most"}), 400)
    not_json = httpx.post(f"{net.url}/v1/inferences", content=b"{nope", timeout=10)
    problem(not_json, 400)
    too_few = problem(infer(net, {"model": "mlp", "inputs": INPUTS, "policy": "quorum:4/2"}), 503)
    assert too_few["needed"] == 4
    huge = b'{"model": "mlp", "inputs": {"x": "' + b"A" * (65 << 20) + b'"}}'
    problem(httpx.post(f"{net.url}/v1/inferences", content=huge, timeout=60), 413)
    problem(httpx.get(f"{net.url}/v1/inferences/no-such-id"), 404)
    assert logged_requests(net) == before


def metric(net: Network, name: str, **labels: str) -> float:
    """A sample's value from ``GET /metrics`` (0 when the labelled series does not exist)."""
    text = httpx.get(f"{net.url}/metrics").text
    wanted = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_inference_on_a_network_with_sqlite(tmp_path: Path) -> None:
    with network(tmp_path) as net:
        _happy_paths(net)
        _bad_requests(net)
        verdicts = "veriml_inference_verdicts_total"
        assert metric(net, verdicts, policy="none", outcome="accepted") == 1
        assert metric(net, verdicts, policy="quorum", outcome="accepted") == 2


@pytest.mark.postgres
def test_inference_on_a_network_with_postgresql(tmp_path: Path, postgres_url: str) -> None:
    with network(tmp_path, postgres_url) as net:
        _happy_paths(net)
        _bad_requests(net)


def test_an_idempotency_key_logs_a_request_once(tmp_path: Path) -> None:
    with network(tmp_path, nodes=1) as net:
        body = {"model": "mlp", "inputs": INPUTS}
        first = infer(net, body, **{"Idempotency-Key": "invoice-7"})
        again = infer(net, body, **{"Idempotency-Key": "invoice-7"})
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert first.json()["id"] == "invoice-7"
        other = infer(
            net,
            {"model": "mlp", "inputs": {"x": tensor_to_json(X + 1)}},
            **{"Idempotency-Key": "invoice-7"},
        )
        assert other.status_code == 409
        assert logged_requests(net) == ["invoice-7"]


def test_a_signed_request_is_logged_with_its_signer_and_a_bad_signature_is_refused(
    tmp_path: Path,
) -> None:
    client_key = generate_key("ed25519")
    with network(tmp_path, nodes=1) as net:
        body = json.dumps({"model": "mlp", "inputs": INPUTS}).encode()
        headers = sign_request(client_key, "POST", f"{net.url}/v1/inferences", body)
        response = httpx.post(f"{net.url}/v1/inferences", content=body, headers=headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["request"] == {"client": client_key.key_id}
        assert check_answer(net, answer).extra == {"client": client_key.key_id}
        # The requester reads it back by its key (the SDK signs the read).
        log_vkey = net.info["log_vkey"]
        with veriml.Client(net.url, log_vkey=log_vkey, key=client_key) as client:
            assert client.inference(answer["id"]).request == {"client": client_key.key_id}
        other = json.dumps({"model": "mlp", "inputs": INPUTS, "policy": "none"}).encode()
        forged = httpx.post(f"{net.url}/v1/inferences", content=other, headers=headers)
        assert forged.status_code == 403
        assert forged.json()["check"] == "request-signature"
        assert logged_requests(net) == [answer["id"]]


def _node_process(config: NodeConfig) -> list[str]:
    script = (
        "import sys; from pathlib import Path; from veriml.node import NodeConfig, serve_node; "
        "serve_node(NodeConfig(coordinator_url=sys.argv[1], key_path=Path(sys.argv[2]), "
        "operator_key=Path(sys.argv[3]), home=Path(sys.argv[4]), port=int(sys.argv[5]), "
        "coordinator_key=Path(sys.argv[6]), heartbeat_interval=1.0))"
    )
    return [
        sys.executable,
        "-c",
        script,
        config.coordinator_url,
        str(config.key_path),
        str(config.operator_key),
        str(config.home),
        str(config.port),
        str(config.coordinator_key),
    ]


def test_a_node_killed_mid_job_loses_no_request_and_logs_none_twice(tmp_path: Path) -> None:
    with network(tmp_path, nodes=2) as net:
        config = _node_config(net.home, net.url, "victim", tmp_path / "coordinator.pub")
        assert config.operator_key is not None
        bond(net.url, net.home, [config.operator_key])
        args = _node_process(config)
        health = f"http://127.0.0.1:{config.port}/healthz"
        with start_process(args, url_to_poll=health) as victim:
            net.node_keys = _wait_live(net.url, 3)

            async def load() -> list[httpx.Response]:
                async with httpx.AsyncClient(timeout=60) as http:

                    async def one(i: int) -> httpx.Response:
                        body = {"model": "mlp", "inputs": INPUTS, "policy": "quorum:2/2"}
                        return await http.post(f"{net.url}/v1/inferences", json=body)

                    async def kill_when_busy() -> bool:
                        # Kill the node while it holds a job (its first pulls the model).
                        deadline = time.monotonic() + 20
                        while time.monotonic() < deadline:
                            with contextlib.suppress(httpx.HTTPError):
                                load = (await http.get(health)).json()["load"]
                                if load["active"] + load["queued"] > 0:
                                    os.kill(victim.pid, signal.SIGKILL)
                                    return True
                            await asyncio.sleep(0.005)
                        return False

                    killer = asyncio.create_task(kill_when_busy())
                    responses = await asyncio.gather(*(one(i) for i in range(24)))
                    assert await killer, "the node never held a job"
                    return list(responses)

            responses = asyncio.run(load())
            victim.wait(10)
        assert [r.status_code for r in responses] == [200] * len(responses), [
            r.text for r in responses if r.status_code != 200
        ]
        answers = [r.json() for r in responses]
        for answer in answers:
            assert check_answer(net, answer).verdict.outcome == "accepted"
        logged = logged_requests(net)
        assert sorted(logged) == sorted(a["id"] for a in answers)
        assert len(set(logged)) == len(logged)
        # The killed node's job failed and was run again elsewhere.
        failures = metric(net, "veriml_inference_node_failures_total", reason="unavailable")
        assert failures >= 1
