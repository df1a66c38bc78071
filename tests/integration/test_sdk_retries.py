"""An inference whose answer is lost on the way is asked for again, and run once (issue 11 §5).

A real coordinator and a real node on loopback, and between the SDK and the coordinator a
proxy that lets the first ``POST /v1/inferences`` through but loses its answer: the connection
breaks once the coordinator has run, logged and begun sending it. The SDK retries with the same
``Idempotency-Key``; the coordinator answers from storage, the SDK verifies that answer, and
the log holds one entry for the request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _logread import logged_entries
from _operators import bond, operator_key
from _proxy import flaky_proxy
from _servers import free_port, serve
from veriml.client import Client
from veriml.coordinator.app import create_app
from veriml.coordinator.settings import Settings
from veriml.core.keys import generate_key, load_private_key
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app

HEARTBEAT = 0.5


@pytest.fixture
def network(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A coordinator and one bonded node; yields the coordinator's URL and log key."""
    home = tmp_path / "net"
    settings = Settings(home=home, heartbeat_interval=HEARTBEAT, log_batch_interval=0.005)
    with serve(create_app(settings)) as url:
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(load_private_key(home / "coordinator" / "coordinator.key").public.to_pem())
        config = NodeConfig(
            coordinator_url=url,
            key_path=tmp_path / "n1" / "node.key",
            operator_key=operator_key(tmp_path / "operator.key"),
            home=tmp_path / "n1",
            coordinator_key=pub,
            port=free_port(),
            concurrency=1,
            heartbeat_interval=HEARTBEAT,
        )
        assert config.operator_key is not None
        bond(url, home, [config.operator_key])
        with serve(create_node_app(config), port=config.port):
            deadline = time.monotonic() + 15
            while not any(n["live"] for n in httpx.get(f"{url}/v1/nodes").json()["nodes"]):
                assert time.monotonic() < deadline, "the node did not register"
                time.sleep(0.05)
            vkey = json.loads((home / "coordinator" / "log.key.json").read_text())["vkey"]
            yield url, vkey


def test_an_inference_whose_answer_was_lost_is_answered_again_and_logged_once(
    tmp_path: Path, network: tuple[str, str]
) -> None:
    url, vkey = network
    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=5), name="mlp")
    generate_key("ec").save(tmp_path / "publisher.key")
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    with Client(url, log_vkey=vkey) as direct:
        digest = str(direct.publish(folder, tmp_path / "publisher.key")["digest"])
    with (
        flaky_proxy(url, drop=b"POST /v1/inferences", when="answer") as proxy,
        Client(proxy.url, log_vkey=vkey) as client,
    ):
        result = client.infer(digest, {"x": x})  # its request id: a fresh Idempotency-Key
    assert proxy.dropped == 1  # the first answer was lost ...
    assert result.verified  # ... and the stored one came, verified
    logged = [
        e
        for e in map(parse_entry, logged_entries(url, vkey))
        if isinstance(e, InferenceEntry) and e.request_id == result.id
    ]
    assert len(logged) == 1
    raw = logged_entries(url, vkey)
    assert raw[result.log.index] == logged[0].to_bytes()
