"""Nodes against the real coordinator: they register, heartbeat, pull a published model through
the hub, answer inferences the SDK verifies end to end, and register again after the
coordinator restarts with a fresh database."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _operators import bond, operator_key
from _servers import free_port, serve
from veriml.client import Client
from veriml.coordinator.app import create_app
from veriml.coordinator.settings import Settings
from veriml.core.keys import generate_key, load_private_key
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app

HEARTBEAT = 0.5


def _settings(home: Path, db_url: str = "") -> Settings:
    return Settings(
        home=home, db_url=db_url, heartbeat_interval=HEARTBEAT, log_batch_interval=0.005
    )


def _node_config(home: Path, coordinator: str, coordinator_pub: Path) -> NodeConfig:
    return NodeConfig(
        coordinator_url=coordinator,
        key_path=home / "node.key",
        operator_key=operator_key(home.parent / f"{home.name}-operator.key"),
        home=home,
        coordinator_key=coordinator_pub,
        port=free_port(),
        concurrency=1,
        heartbeat_interval=HEARTBEAT,
    )


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _live_nodes(url: str) -> list[dict[str, object]]:
    body = httpx.get(f"{url}/v1/nodes").json()
    nodes = body["nodes"] if isinstance(body, dict) else body
    return [n for n in nodes if n["live"]]


@pytest.fixture(params=["sqlite", "postgres"])
def network(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Path, list[str]]]:
    """A coordinator (on SQLite or PostgreSQL) and two nodes of distinct operators."""
    db_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""
    home = tmp_path / "net"
    port = free_port()
    with serve(create_app(_settings(home, db_url)), port=port) as url:
        coordinator_key = load_private_key(home / "coordinator" / "coordinator.key")
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(coordinator_key.public.to_pem())
        c1 = _node_config(tmp_path / "n1", url, pub)
        c2 = _node_config(tmp_path / "n2", url, pub)
        bond(url, home, [c.operator_key for c in (c1, c2) if c.operator_key is not None])
        with (
            serve(create_node_app(c1), port=c1.port) as n1,
            serve(create_node_app(c2), port=c2.port) as n2,
        ):
            _wait(lambda: len(_live_nodes(url)) == 2, "two live nodes")
            yield url, home, [n1, n2]


def _publish(tmp_path: Path, client: Client) -> str:
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=5), name="mlp")
    key = tmp_path / "publisher.key"
    generate_key("ec").save(key)
    return str(client.publish(folder, key)["digest"])


def test_inferences_on_registered_nodes_verify_end_to_end(
    tmp_path: Path, network: tuple[str, Path, list[str]]
) -> None:
    url, home, nodes = network
    ids = {httpx.get(f"{n}/v1/info").json()["node_id"] for n in nodes}
    vkey = json.loads((home / "coordinator" / "log.key.json").read_text())["vkey"]
    with Client(url, log_vkey=vkey) as client:
        digest = _publish(tmp_path, client)
        x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
        for policy in ("none", "quorum:2/2"):
            result = client.infer(digest, {"x": x}, policy=policy)
            assert result.verdict.outcome == "accepted"
            assert result.verified, "the SDK verified the answer"
            assert {n.id for n in result.nodes} <= ids
        assert {n.id for n in result.nodes} == ids == set(result.verdict.agreeing)
    assert ids == {n["node_id"] for n in _live_nodes(url)}
    # Heartbeats report what each node now has cached.
    _wait(
        lambda: all(digest in n["cached"] for n in _live_nodes(url)),
        "heartbeats listing the pulled model",
    )


def test_nodes_register_again_after_the_coordinator_loses_its_database(tmp_path: Path) -> None:
    home = tmp_path / "net"
    port = free_port()
    with serve(create_app(_settings(home)), port=port) as url:
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(load_private_key(home / "coordinator" / "coordinator.key").public.to_pem())
    config = _node_config(tmp_path / "n1", f"http://127.0.0.1:{port}", pub)
    with serve(create_node_app(config), port=config.port) as node:
        with serve(create_app(_settings(home)), port=port) as url:
            _wait(lambda: len(_live_nodes(url)) == 1, "the node to register")
        (home / "coordinator" / "veriml.db").unlink()
        with serve(create_app(_settings(home)), port=port) as url:
            _wait(lambda: len(_live_nodes(url)) == 1, "the node to register again")
            node_id = httpx.get(f"{node}/v1/info").json()["node_id"]
            assert _live_nodes(url)[0]["node_id"] == node_id
