"""A local network's processes and ports: a port any socket holds counts as taken and is
skipped, automatic ports stay out of the kernel's ephemeral range, and stopping a group gives
each child its grace and then kills the one that ignores SIGTERM."""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from veriml.client._children import (
    HOST,
    Child,
    _ephemeral_low,
    free_port,
    next_free_port,
    port_free,
    terminate,
)
from veriml.client._local import LocalNetwork
from veriml.core.errors import ConflictError

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "sys.stdout.write('ready\\n'); sys.stdout.flush()\n"
    "time.sleep(120)\n"
)


@pytest.fixture
def client_socket() -> Iterator[int]:
    """A connected client socket bound to a port below the ephemeral range (what a test's
    HTTP client held when ``--port P`` used to put a node on it blindly); yields that port."""
    with socket.socket() as listener:
        listener.bind((HOST, 0))
        listener.listen()
        port = free_port()
        client = socket.socket()
        client.bind((HOST, port))
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        try:
            yield port
        finally:
            client.close()
            accepted.close()


def test_a_port_held_by_a_client_socket_is_not_free_and_is_skipped(client_socket: int) -> None:
    assert not port_free(client_socket)
    assert next_free_port(client_socket - 1) != client_socket


def test_automatic_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    low = _ephemeral_low()
    ports: set[int] = set()
    for _ in range(20):
        port = free_port(ports)
        assert port not in ports
        assert port_free(port)
        if low > 11_000:
            assert port < low  # no outgoing connection can be handed it meanwhile
        ports.add(port)


def test_nodes_and_witnesses_skip_a_held_port_above_the_coordinators(
    tmp_path: Path, client_socket: int
) -> None:
    base = client_socket - 1
    net = LocalNetwork(tmp_path, nodes=2, port=base, witnesses=1)
    ports = [c.port for c in (*net.nodes, *net.witnesses)]
    assert net.coordinator.port == base
    assert client_socket not in ports
    assert len(set(ports)) == 3
    assert all(p > base for p in ports)
    # The node's command line says the port its URL names.
    args = net.nodes[0].args
    assert args[args.index("--port") + 1] == str(net.nodes[0].port)


def test_a_coordinator_port_in_use_is_refused_before_anything_starts(
    tmp_path: Path, client_socket: int
) -> None:
    net = LocalNetwork(tmp_path / "home", nodes=1, port=client_socket, witnesses=1)
    with pytest.raises(ConflictError, match="in use"):
        net.start()
    assert not (tmp_path / "home").exists()


def _child(tmp_path: Path, name: str, code: str) -> Child:
    return Child(name, "http://127.0.0.1:1", [sys.executable, "-c", code], tmp_path / name)


def _wait_ready(child: Child) -> None:
    deadline = time.monotonic() + 20
    while "ready" not in child.tail():
        assert time.monotonic() < deadline, child.tail()
        time.sleep(0.02)


def test_stopping_kills_a_child_that_ignores_sigterm_after_the_grace(tmp_path: Path) -> None:
    polite = _child(tmp_path, "polite", "print('ready', flush=True); import time; time.sleep(120)")
    stubborn = _child(tmp_path, "stubborn", IGNORES_SIGTERM)
    for child in (polite, stubborn):
        child.start({})
        _wait_ready(child)
    t0 = time.monotonic()
    killed = terminate([polite, stubborn], grace=1.0)
    elapsed = time.monotonic() - t0
    assert killed == [stubborn]
    assert 1.0 <= elapsed < 5
    assert polite.process is not None
    assert polite.process.returncode == -signal.SIGTERM
    assert stubborn.process is not None
    assert stubborn.process.returncode == -signal.SIGKILL


def test_a_hurry_kills_at_once_whatever_the_grace(tmp_path: Path) -> None:
    import threading

    stubborn = _child(tmp_path, "stubborn", IGNORES_SIGTERM)
    stubborn.start({})
    _wait_ready(stubborn)
    hurry = threading.Event()
    hurry.set()
    t0 = time.monotonic()
    assert terminate([stubborn], grace=60, hurry=hurry) == [stubborn]
    assert time.monotonic() - t0 < 5
