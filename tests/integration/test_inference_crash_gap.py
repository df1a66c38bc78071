"""The crash gap of an inference: a coordinator SIGKILLed after appending the entry and before
storing the answer. After a restart on the same state the answer is served (``GET``, and a
retry with the same ``Idempotency-Key``), it verifies, and the request is logged exactly once.

The kill comes from the coordinator's test-only fault hook
(``VERIML_UNSAFE_TEST_CRASH_AFTER_LOG_APPEND=1``), so it lands exactly in the gap."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

import veriml
from _operators import bond, operator_key
from _servers import free_port, serve, start_process
from veriml.coordinator.inference.faults import CRASH_AFTER_APPEND
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.node import NodeConfig, create_node_app
from veriml.tlog import LogClient, NoteVerifier

X = np.random.default_rng(3).standard_normal((2, 8)).astype(np.float32)
KEY = "crash-gap-1"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


def _coordinator(home: Path, port: int) -> list[str]:
    serve_args = ["coordinator", "serve", "--home", str(home), "--host", "127.0.0.1"]
    return [sys.executable, "-m", "veriml", *serve_args, "--port", str(port)]


def _logged_ids(url: str, vkey: str) -> list[str]:
    with LogClient(f"{url}/log", NoteVerifier.from_vkey(vkey)) as log:
        signed = log.checkpoint()
        raw = [log.entry(i, signed)[0] for i in range(signed.checkpoint.size)]
    return [e.request_id for e in map(parse_entry, raw) if isinstance(e, InferenceEntry)]


def test_an_answer_logged_before_a_crash_is_served_after_restart_and_logged_once(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Read by the coordinator processes started below.
    monkeypatch.setenv("VERIML_DB_URL", db_url)
    monkeypatch.setenv("VERIML_HEARTBEAT_INTERVAL", "1")
    monkeypatch.setenv(CRASH_AFTER_APPEND, "1")
    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder = write_example_folder(tmp_path / "mlp", build_mlp((8, 16, 3), seed=2), name="mlp")
    publisher = tmp_path / "publisher.key"
    generate_key("ec").save(publisher)
    output = tmp_path / "coordinator.log"
    body = {
        "model": "mlp",
        "inputs": {"x": tensor_to_json(X)},
        "policy": "none",
        "visibility": "public",  # read back below by another client
    }
    with contextlib.ExitStack() as stack:
        coordinator = stack.enter_context(
            start_process(_coordinator(home, port), url_to_poll=f"{url}/healthz", output=output)
        )
        info = httpx.get(f"{url}/v1/info").json()
        pem = tmp_path / "coordinator.pub"
        pem.write_text(info["coordinator_key"])
        config = NodeConfig(
            coordinator_url=url,
            key_path=home / "nodes" / "n0" / "node.key",
            operator_key=operator_key(home / "operators" / "op-0" / "operator.key"),
            home=home / "nodes" / "n0",
            port=free_port(),
            coordinator_key=pem,
            heartbeat_interval=1.0,
        )
        assert config.operator_key is not None
        bond(url, home, [config.operator_key])
        stack.enter_context(serve(create_node_app(config), port=config.port))
        deadline = time.monotonic() + 30
        while not httpx.get(f"{url}/v1/nodes").json()["nodes"]:
            assert time.monotonic() < deadline, "the node did not register"
            time.sleep(0.1)
        with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
            client.publish(folder, publisher)

        # The coordinator appends the entry, then dies before storing the answer.
        with pytest.raises(httpx.TransportError):
            httpx.post(
                f"{url}/v1/inferences", json=body, headers={"Idempotency-Key": KEY}, timeout=60
            )
        assert coordinator.wait(10) == -signal.SIGKILL

        monkeypatch.delenv(CRASH_AFTER_APPEND)
        with start_process(_coordinator(home, port), url_to_poll=f"{url}/healthz", output=output):
            assert _logged_ids(url, info["log_vkey"]) == [KEY]
            # Completed at start-up from the log: served, and it verifies (receipt, log
            # inclusion against the pinned log key, verdict).
            stored = httpx.get(f"{url}/v1/inferences/{KEY}")
            assert stored.status_code == 200
            with veriml.Client(url, log_vkey=info["log_vkey"]) as client:
                verified = client.inference(KEY)
            assert verified.id == KEY
            # A retry with the same key gets that answer; nothing runs or is logged again.
            retry = httpx.post(
                f"{url}/v1/inferences", json=body, headers={"Idempotency-Key": KEY}, timeout=60
            )
            assert retry.status_code == 200
            assert retry.json() == stored.json()
            assert _logged_ids(url, info["log_vkey"]) == [KEY]
