"""The node registry over HTTP and the repository the scheduler uses: only fresh descriptors
signed by the key they carry, with their operator's binding, register; a node stays with its
first operator; each registration is one log entry; heartbeats come from the registered key
only; liveness follows heartbeats."""

from __future__ import annotations

import datetime as dt
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import running_coordinator
from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Signature
from veriml.core.keys import SigningKey, generate_key
from veriml.ledger.entries import BeaconEntry, NodeEntry, StateEntry, parse_entry
from veriml.protocol.accounts import OPERATOR_BINDING_TYPE, OperatorBinding
from veriml.protocol.messages import Heartbeat, NodeDescriptor, format_time
from veriml.tlog.tiles import decode_entry_bundle

MODEL = Digest.of(b"a model")
STARTUP_ENTRIES = 2  # a coordinator logs its rules (state) and its first beacon epoch first


@pytest.fixture(params=["sqlite", "postgres"])
def coordinator(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FastAPI]]:
    settings: dict[str, Any] = {}
    if request.param == "postgres":
        settings["db_url"] = request.getfixturevalue("postgres_url")
    with running_coordinator(tmp_path / "home", **settings) as running:
        yield running


OPERATOR = generate_key()


def _descriptor(
    key: SigningKey,
    *,
    operator: SigningKey = OPERATOR,
    binding: Envelope | None = None,
    endpoint: str = "http://127.0.0.1:9001",
    issued: dt.datetime | None = None,
    nonce: str | None = None,
    models: tuple[str, ...] = ("*",),
) -> Envelope:
    return NodeDescriptor(
        public_key=key.public.to_pem().decode(),
        operator_binding=binding or OperatorBinding.of(operator, key.key_id).sign(operator),
        endpoint=endpoint,
        issued_at=format_time(issued or dt.datetime.now(dt.UTC)),
        nonce=nonce or secrets.token_hex(16),
        models=models,
    ).sign(key)


def _heartbeat(key: SigningKey, *, at: dt.datetime | None = None, **load: Any) -> Envelope:
    when = format_time(at or dt.datetime.now(dt.UTC))
    return Heartbeat(node_id=key.key_id, issued_at=when, **load).sign(key)


def _post(url: str, path: str, envelope: Envelope | dict[str, Any]) -> httpx.Response:
    body = envelope.to_json() if isinstance(envelope, Envelope) else envelope
    return httpx.post(url + path, json=body)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def _entries(url: str) -> list[bytes]:
    size = int(httpx.get(url + "/log/checkpoint").text.splitlines()[1])
    if size == 0:
        return []
    return decode_entry_bundle(httpx.get(f"{url}/log/tile/entries/000.p/{size}").content)


def test_a_signed_fresh_descriptor_registers_and_is_logged_once(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    opened = _entries(url)  # the rules (a state entry) and the first beacon epoch
    assert [type(parse_entry(e)) for e in opened] == [StateEntry, BeaconEntry]
    key = generate_key()
    envelope = _descriptor(key)
    answer = _post(url, "/v1/nodes", envelope)
    assert answer.status_code == 201, answer.text
    assert answer.json() == {"node_id": key.key_id, "log_index": len(opened)}
    (entry,) = [parse_entry(e) for e in _entries(url)[len(opened) :]]
    assert isinstance(entry, NodeEntry)
    # Re-checkable from the log alone: the node's signature and its operator's binding.
    assert (entry.open().node_id, entry.open().operator) == (key.key_id, OPERATOR.key_id)
    (node,) = httpx.get(url + "/v1/nodes").json()["nodes"]
    assert (node["node_id"], node["operator"]) == (key.key_id, OPERATOR.key_id)
    assert node["live"] is True
    assert node["log_index"] == len(opened)
    operators = httpx.get(url + "/v1/ledger/state").json()["operators"]
    assert operators == {key.key_id: OPERATOR.key_id}


def test_a_forged_descriptor_is_403_and_not_logged(coordinator: tuple[str, FastAPI]) -> None:
    url, _ = coordinator
    key, forger = generate_key(), generate_key()
    genuine = _descriptor(key)
    # Signed by another key, claiming the node's key: the signature is not the node's.
    forged = Envelope(
        genuine.payload_type,
        genuine.payload,
        (Signature(key.key_id, forger.sign(genuine.payload)),),
    )
    _problem(_post(url, "/v1/nodes", forged), 403)
    # A payload changed after signing.
    tampered = Envelope(
        genuine.payload_type, genuine.payload.replace(b":9001", b":9009"), genuine.signatures
    )
    _problem(_post(url, "/v1/nodes", tampered), 403)
    unsigned = genuine.to_json() | {"signatures": []}
    _problem(_post(url, "/v1/nodes", unsigned), 403)
    assert len(_entries(url)) == STARTUP_ENTRIES
    assert httpx.get(url + "/v1/nodes").json()["nodes"] == []


def test_a_binding_for_another_node_or_by_another_key_is_403_and_not_logged(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    key, elsewhere, impostor = generate_key(), generate_key(), generate_key()
    borrowed = OperatorBinding.of(OPERATOR, elsewhere.key_id).sign(OPERATOR)
    problem = _problem(_post(url, "/v1/nodes", _descriptor(key, binding=borrowed)), 403)
    assert problem["check"] == "operator-binding"
    # The operator's binding of this node, signed by someone else.
    payload = canonicalize(OperatorBinding.of(OPERATOR, key.key_id).to_json())
    resigned = Envelope.sign(payload, [impostor], payload_type=OPERATOR_BINDING_TYPE)
    _problem(_post(url, "/v1/nodes", _descriptor(key, binding=resigned)), 403)
    assert len(_entries(url)) == STARTUP_ENTRIES
    assert httpx.get(url + "/v1/nodes").json()["nodes"] == []


def test_a_node_bound_to_one_operator_cannot_register_under_another(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    key, other_operator = generate_key(), generate_key()
    assert _post(url, "/v1/nodes", _descriptor(key)).status_code == 201
    problem = _problem(_post(url, "/v1/nodes", _descriptor(key, operator=other_operator)), 409)
    assert problem["operator"] == OPERATOR.key_id
    assert len(_entries(url)) == STARTUP_ENTRIES + 1
    (node,) = httpx.get(url + "/v1/nodes").json()["nodes"]
    assert node["operator"] == OPERATOR.key_id
    # Its own operator may register it again (a restart, a new endpoint).
    again = _descriptor(key, endpoint="http://127.0.0.1:9002")
    assert _post(url, "/v1/nodes", again).status_code == 201


def test_a_stale_or_future_descriptor_is_403(coordinator: tuple[str, FastAPI]) -> None:
    url, _ = coordinator
    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    for issued in (now - dt.timedelta(minutes=10), now + dt.timedelta(minutes=10)):
        problem = _problem(_post(url, "/v1/nodes", _descriptor(key, issued=issued)), 403)
        assert problem["check"] == "freshness"
    assert len(_entries(url)) == STARTUP_ENTRIES


def test_a_replayed_descriptor_is_409_and_not_logged_again(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    envelope = _descriptor(generate_key())
    assert _post(url, "/v1/nodes", envelope).status_code == 201
    problem = _problem(_post(url, "/v1/nodes", envelope), 409)
    assert problem["nonce"]
    assert len(_entries(url)) == STARTUP_ENTRIES + 1


def test_re_registration_updates_the_node_and_logs_the_new_descriptor(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    key = generate_key()
    assert _post(url, "/v1/nodes", _descriptor(key)).status_code == 201
    moved = _post(url, "/v1/nodes", _descriptor(key, endpoint="http://127.0.0.1:9002"))
    assert moved.json()["log_index"] == STARTUP_ENTRIES + 1
    (node,) = httpx.get(url + "/v1/nodes").json()["nodes"]
    assert node["endpoint"] == "http://127.0.0.1:9002"
    assert node["log_index"] == STARTUP_ENTRIES + 1
    assert len(_entries(url)) == STARTUP_ENTRIES + 2


def test_heartbeats_come_from_the_registered_key_and_move_forward(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    key, other = generate_key(), generate_key()
    assert _post(url, "/v1/nodes", _descriptor(key)).status_code == 201
    path = f"/v1/nodes/{key.key_id}/heartbeat"
    now = dt.datetime.now(dt.UTC)
    beat = _heartbeat(key, at=now, active=2, queued=1, capacity=4, cached=(MODEL.to_text(),))
    assert _post(url, path, beat).status_code == 200
    (node,) = httpx.get(url + "/v1/nodes").json()["nodes"]
    assert node["load"] == {"active": 2, "queued": 1, "capacity": 4}
    assert node["cached"] == [MODEL.to_text()]
    # Signed by a stranger, even one naming the node: 403.
    impostor = Heartbeat(node_id=key.key_id, issued_at=format_time(now)).sign(other)
    _problem(_post(url, path, impostor), 403)
    # Not newer than the last one (a replay): 409.
    _problem(_post(url, path, beat), 409)
    _problem(_post(url, path, _heartbeat(key, at=now - dt.timedelta(seconds=1))), 409)
    # An unknown node: 404.
    _problem(_post(url, f"/v1/nodes/{other.key_id}/heartbeat", _heartbeat(other)), 404)
    # From the future: 403.
    _problem(_post(url, path, _heartbeat(key, at=now + dt.timedelta(hours=1))), 403)


def test_oversize_registration_body_is_413(coordinator: tuple[str, FastAPI]) -> None:
    url, _ = coordinator
    response = httpx.post(url + "/v1/nodes", content=b"{" + b" " * (1 << 20) + b"}")
    _problem(response, 413)


def test_live_nodes_are_least_loaded_first_and_failed_nodes_wait_for_a_heartbeat(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, app = coordinator
    keys = [generate_key() for _ in range(3)]
    for i, key in enumerate(keys):
        models = ("*",) if i < 2 else (Digest.of(b"another").to_text(),)
        assert _post(url, "/v1/nodes", _descriptor(key, operator=generate_key(), models=models))
    busy, idle, other = keys
    assert _post(url, f"/v1/nodes/{busy.key_id}/heartbeat", _heartbeat(busy, active=3))
    assert _post(url, f"/v1/nodes/{idle.key_id}/heartbeat", _heartbeat(idle, capacity=2))
    nodes = app.state.coordinator.nodes
    assert [n.node_id for n in nodes.live_nodes(MODEL)] == [idle.key_id, busy.key_id]
    nodes.adjust_active(idle.key_id, 10)  # 10 of 2 slots busy vs 3 of 1
    assert [n.node_id for n in nodes.live_nodes(MODEL)] == [busy.key_id, idle.key_id]
    nodes.adjust_active(idle.key_id, -50)
    assert nodes.get(idle.key_id).active == 0  # never below zero
    nodes.mark_failed(idle.key_id)
    assert [n.node_id for n in nodes.live_nodes(MODEL)] == [busy.key_id]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert _post(url, f"/v1/nodes/{idle.key_id}/heartbeat", _heartbeat(idle, at=later))
    assert {n.node_id for n in nodes.live_nodes(MODEL)} == {busy.key_id, idle.key_id}
    # Liveness is three heartbeat intervals.
    future = time.time() + 3 * app.state.coordinator.settings.heartbeat_interval + 1
    assert nodes.live_nodes(MODEL, now=future) == []
    listed = {n["node_id"]: n["live"] for n in httpx.get(url + "/v1/nodes").json()["nodes"]}
    assert listed == {busy.key_id: True, idle.key_id: True, other.key_id: True}
