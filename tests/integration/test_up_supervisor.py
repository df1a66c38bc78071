"""``veriml up`` is a supervisor, as real processes: a port a client socket holds is skipped;
a node killed with SIGKILL is restarted, ``network.json`` stays and names its new pid, and the
restarted node answers again; SIGTERM stops every child, killing one that ignores SIGTERM once
its grace is over.

One network serves the module's tests in order (the last one stops it). Node 1 ignores
SIGTERM through a test-only start-up hook (tests/_hooks/ignore_sigterm), loaded only here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from veriml.client import Client
from veriml.client._children import HOST, free_port, port_free
from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

HOOK = Path(__file__).resolve().parents[1] / "_hooks" / "ignore_sigterm"
GRACE = 3.0
UP = [sys.executable, "-m", "veriml", "up"]


@dataclass
class Up:
    process: subprocess.Popen[bytes]
    home: Path
    port: int
    held: int
    out: Path
    err: Path

    def network(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.home / "network.json").read_text())
        return data

    def children(self) -> list[int]:
        """The supervisor's child processes (coordinator, witness, nodes)."""
        pid = self.process.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(p) for p in text.split()]


def _held_client_socket() -> tuple[int, socket.socket, socket.socket, socket.socket]:
    """A base port P whose neighbour P+1 a connected client socket holds."""
    for _ in range(50):
        base = free_port()
        if not port_free(base + 1):
            continue
        listener = socket.socket()
        listener.bind((HOST, 0))
        listener.listen()
        client = socket.socket()
        try:
            client.bind((HOST, base + 1))
        except OSError:
            client.close()
            listener.close()
            continue
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        return base, listener, client, accepted
    raise AssertionError("no free pair of ports")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # An exited child the supervisor has not reaped yet is a zombie.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("up")
    home = root / "home"
    base, *sockets = _held_client_socket()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK), os.environ.get("PYTHONPATH")])),
        "VERIML_TEST_IGNORE_SIGTERM": str(home / "nodes" / "node-1") + " ",
        "VERIML_URL": "",
    }
    out, err = root / "up.out", root / "up.err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [*UP, "--nodes", "2", "--port", str(base), "--home", str(home), "--grace", str(GRACE)],
            stdout=stdout,
            stderr=stderr,
            env=env,
        )
    state = Up(process, home, base, base + 1, out, err)
    children: list[int] = []
    try:
        deadline = time.monotonic() + 150
        while not (home / "network.json").exists():
            assert process.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "veriml up did not become ready"
            time.sleep(0.2)
        children = state.children()
        yield state
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        for pid in children:  # whatever a failed test left behind
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        for s in sockets:
            s.close()


def test_a_port_a_client_socket_holds_is_skipped_and_the_network_starts(up: Up) -> None:
    network = up.network()
    assert network["url"] == f"http://{HOST}:{up.port}"
    ports = [int(n["url"].rsplit(":", 1)[1]) for n in network["nodes"]]
    assert up.held not in ports
    assert all(p > up.port for p in ports)
    assert all(n["pid"] > 0 for n in network["nodes"])


def _registrations(url: str) -> dict[str, int]:
    nodes = httpx.get(url + "/v1/nodes", timeout=5).json()["nodes"]
    return {n["node_id"]: n["log_index"] for n in nodes if n["live"]}


def test_a_killed_node_is_restarted_keeps_network_json_and_answers_again(
    up: Up, tmp_path: Path
) -> None:
    network = up.network()
    url, victim = network["url"], network["nodes"][1]
    before = _registrations(url)[victim["id"]]
    os.kill(victim["pid"], signal.SIGKILL)

    deadline = time.monotonic() + 60
    while True:
        assert up.process.poll() is None, up.err.read_text()
        assert time.monotonic() < deadline, up.err.read_text()
        if (up.home / "network.json").exists():
            pid = up.network()["nodes"][1]["pid"]
            if pid not in (0, victim["pid"]):
                break
        time.sleep(0.2)
    assert _gone(victim["pid"])
    assert not _gone(pid)
    assert "node-2 exited (SIGKILL)" in up.err.read_text()
    # The restarted node registered again: a newer registration entry, same node id.
    while _registrations(url).get(victim["id"], -1) <= before:
        assert time.monotonic() < deadline, up.out.read_text()
        time.sleep(0.2)

    folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=3), name="mlp")
    generate_key("ec").save(tmp_path / "publisher.key")
    x = np.ones((1, 4), np.float32)
    with Client(url, log_vkey=network["log_vkey"]) as client:
        client.publish(folder, tmp_path / "publisher.key")
        # quorum:2/2 needs both nodes (two operators): the restarted one answers too.
        answer = client.infer("mlp", {"x": x}, policy="quorum:2/2")
    assert answer.verdict.outcome == "accepted"
    assert victim["id"] in answer.verdict.agreeing


def test_sigterm_stops_every_child_killing_the_one_that_hangs_after_the_grace(up: Up) -> None:
    children = up.children()
    assert len(children) == 4  # a witness, the coordinator, two nodes
    t0 = time.monotonic()
    up.process.send_signal(signal.SIGTERM)
    up.process.wait(timeout=GRACE + 30)
    elapsed = time.monotonic() - t0
    assert up.process.returncode == 0, up.err.read_text()
    assert all(_gone(pid) for pid in children)
    # Node 1 ignored SIGTERM: it got its grace, then SIGKILL; the others stopped on SIGTERM.
    assert "node-1 did not stop within 3 s: killed" in up.err.read_text()
    assert "node-2 did not stop" not in up.err.read_text()
    assert GRACE <= elapsed < GRACE + 15
    assert not (up.home / "network.json").exists()
