"""``serve_node`` in its own process: SIGTERM stops it accepting, the job it already admitted
still gets its signed answer, and the process exits cleanly."""

from __future__ import annotations

import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _node_harness import HubStandIn, inputs_for, job_body, make_signed_model, wait_until

from _servers import free_port, serve, start_process
from veriml.core.keys import generate_key
from veriml.runtime import RunResult

SCRIPT = """
import sys
from pathlib import Path
from veriml.node import NodeConfig, serve_node
home = Path(sys.argv[2])
serve_node(NodeConfig(coordinator_url=sys.argv[1], key_path=home / "node.key",
    operator_key=Path(sys.argv[5]), home=home, port=int(sys.argv[3]),
    coordinator_key=Path(sys.argv[4]), shutdown_grace=20, heartbeat_interval=0.2))
"""


def test_sigterm_lets_the_admitted_job_finish_then_exits(tmp_path: Path) -> None:
    coordinator = generate_key()
    pub = tmp_path / "coordinator.pub"
    pub.write_bytes(coordinator.public.to_pem())
    operator = tmp_path / "operator.key"
    generate_key("ed25519").save(operator)
    model = make_signed_model(tmp_path)
    hub = HubStandIn(coordinator)
    hub.publish(model)
    hub.blob_gate = threading.Event()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with serve(hub.app()) as hub_url:
        home = tmp_path / "node"
        args = [
            sys.executable,
            "-c",
            SCRIPT,
            hub_url,
            str(home),
            str(port),
            str(pub),
            str(operator),
        ]
        with (
            start_process(args, url_to_poll=f"{url}/healthz") as proc,
            ThreadPoolExecutor(1) as pool,
        ):
            node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
            body = job_body(coordinator, node_id, model.digest, inputs_for())
            pending = pool.submit(httpx.post, f"{url}/v1/jobs", json=body, timeout=60)
            wait_until(
                lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 1, timeout=30
            )
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: _refuses(url), what="the node to stop accepting", timeout=30)
            hub.blob_gate.set()
            answer = pending.result()
            # uvicorn re-raises the signal it handled once shut down, so the status says SIGTERM.
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        assert answer.status_code == 200
        assert RunResult.from_json(answer.json()).predicate.node_id == node_id


def _refuses(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.ConnectError:
        return True
    except httpx.TimeoutException:  # a loaded machine: still up, ask again
        return False
    return False
