"""A node registers with a signed descriptor, heartbeats, registers again when its coordinator
forgets it, keeps its key across restarts, keeps traces for their retention, and finishes the
jobs it admitted when it shuts down."""

from __future__ import annotations

import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from _node_harness import (
    HubStandIn,
    SignedModel,
    inputs_for,
    job_body,
    node_config,
    running_node,
    wait_until,
)

from _servers import HOST, free_port, serve
from _traces import read_trace
from veriml.core.errors import FormatError, KeyFileError
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.node import create_node_app, load_node_key
from veriml.runtime import Profile, RunResult, Trace, runtime_fingerprint


def test_registration_is_a_fresh_descriptor_signed_by_the_node_key(
    tmp_path: Path, hub: HubStandIn, hub_url: str, coordinator_pub: Path
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, port=free_port())
    with running_node(config) as url:
        wait_until(lambda: len(hub.registrations) == 1, what="registration")
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
    descriptor = hub.registrations[0]
    assert descriptor.node_id == node_id
    assert config.operator_key is not None  # the operator's account is its key's id
    assert descriptor.operator == load_private_key(config.operator_key).key_id
    assert descriptor.models == ("*",)
    assert descriptor.endpoint == config.advertised_endpoint
    assert descriptor.runtime == runtime_fingerprint(Profile())


def test_heartbeats_carry_load_and_a_forgotten_node_registers_again(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, concurrency=3)
    with running_node(config) as url:
        wait_until(lambda: len(hub.heartbeats) >= 2, what="heartbeats")
        assert hub.heartbeats[-1].capacity == 3
        body = job_body(
            coordinator_key, hub.registrations[0].node_id, signed_model.digest, inputs_for()
        )
        assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200
        wait_until(
            lambda: signed_model.digest.to_text() in hub.heartbeats[-1].cached,
            what="a heartbeat listing the cached model",
        )
        hub.forget_nodes()
        wait_until(lambda: len(hub.registrations) == 2, what="re-registration")
        assert hub.registrations[0].nonce != hub.registrations[1].nonce
        count = len(hub.heartbeats)
        wait_until(lambda: len(hub.heartbeats) > count, what="heartbeats after re-registering")


def test_registration_is_retried_until_the_coordinator_answers(
    tmp_path: Path, hub: HubStandIn, coordinator_pub: Path
) -> None:
    port = free_port()
    config = node_config(tmp_path / "node", f"http://{HOST}:{port}", coordinator_pub)
    with running_node(config) as url:
        time.sleep(0.7)  # a couple of refused attempts
        assert not httpx.get(f"{url}/healthz").json()["registered"]
        with serve(hub.app(), port=port):
            wait_until(lambda: httpx.get(f"{url}/healthz").json()["registered"], timeout=15)
    assert len(hub.registrations) == 1


def test_without_a_pinned_key_a_node_does_not_start_and_believes_no_coordinator(
    tmp_path: Path, hub: HubStandIn, hub_url: str
) -> None:
    with pytest.raises(FormatError, match="coordinator's public key"):
        node_config(tmp_path / "node", hub_url, None)
    assert hub.registrations == []  # nothing was asked of whoever answers at the URL


def test_the_node_key_is_created_private_and_kept_across_restarts(
    tmp_path: Path, hub_url: str, coordinator_pub: Path
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    ids = []
    for _ in range(2):
        with running_node(config) as url:
            info = httpx.get(f"{url}/v1/info")
            ids.append(info.json()["node_id"])
            assert "PRIVATE KEY" not in info.text + httpx.get(f"{url}/healthz").text
    assert ids[0] == ids[1]
    assert stat.S_IMODE(config.key_path.stat().st_mode) == 0o600


def test_a_traced_job_without_retain_until_keeps_its_trace_for_the_retention_period_only(
    tmp_path: Path,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    # No hold after reads: this test reads the trace, then waits for its retention to end.
    config = node_config(
        tmp_path / "node", hub_url, coordinator_pub, trace_retention=3, trace_hold=0
    )
    with running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        inputs = inputs_for()
        body = job_body(
            coordinator_key, node_id, signed_model.digest, inputs, trace=True, request_id="t-1"
        )
        answer = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
        assert answer.status_code == 200
        result = RunResult.from_json(answer.json())
        assert result.predicate.trace is not None
        kept = read_trace(coordinator_key, f"{url}/v1/traces/t-1")
        assert kept.status_code == 200
        trace = Trace.from_json(kept.json()["trace"])
        assert trace.root == result.predicate.trace.root
        tensors = {n: tensor_from_json(t) for n, t in kept.json()["tensors"].items()}
        assert tensor_digest(tensors["x"]) == tensor_digest(inputs["x"])
        for entry in trace.entries:
            assert tensor_digest(tensors[entry.output]) == entry.digest
        time.sleep(3.2)
        gone = read_trace(coordinator_key, f"{url}/v1/traces/t-1")
        assert gone.status_code == 404
        assert gone.headers["content-type"] == "application/problem+json"


def test_an_untraced_job_keeps_no_trace(
    tmp_path: Path,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        body = job_body(coordinator_key, node_id, signed_model.digest, inputs_for(), request_id="u")
        assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200
        assert read_trace(coordinator_key, f"{url}/v1/traces/u").status_code == 404


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


def test_shutdown_stops_accepting_and_finishes_the_job_in_flight(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.blob_gate = threading.Event()
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, shutdown_grace=20)
    port = free_port()
    server = _Server(
        uvicorn.Config(
            create_node_app(config),
            host=HOST,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=20,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{HOST}:{port}"
    try:
        wait_until(lambda: server.started, what="server start")
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        with ThreadPoolExecutor(1) as pool:
            body = job_body(coordinator_key, node_id, signed_model.digest, inputs_for())
            pending = pool.submit(httpx.post, f"{url}/v1/jobs", json=body, timeout=60)
            wait_until(lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 1)
            server.should_exit = True
            time.sleep(0.5)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/healthz", timeout=2)
            hub.blob_gate.set()
            answer = pending.result()
        assert answer.status_code == 200
        assert RunResult.from_json(answer.json()).predicate.model_digest == signed_model.digest
        thread.join(20)
        assert not thread.is_alive()
        beats = len(hub.heartbeats)
        time.sleep(0.5)
        assert len(hub.heartbeats) == beats, "heartbeats stop with the node"
    finally:
        hub.blob_gate.set()
        server.should_exit = True
        thread.join(20)


def test_a_key_created_with_a_passphrase_needs_it_to_load(tmp_path: Path) -> None:
    path = tmp_path / "n" / "node.key"
    created = load_node_key(path, b"s3cret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_node_key(path, b"s3cret").key_id == created.key_id
    with pytest.raises(KeyFileError):
        load_node_key(path, None)


def test_a_node_key_must_be_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    generate_key("ec").save(path)
    with pytest.raises(KeyFileError):
        load_node_key(path, None)
