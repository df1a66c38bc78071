"""The processes of a local network: one :class:`Child` per service, the ports they listen on,
and stopping a group of them within a grace period.

Ports. A child is told its port on the command line (a node advertises ``http://host:port``
to the coordinator, so it must know it before it binds). :func:`free_port` therefore picks the
port, and picks it where nothing else will take it between the check and the child's bind: a
port the kernel never hands to an outgoing connection (below
``/proc/sys/net/ipv4/ip_local_port_range``), and one a listener can bind now
(:func:`port_free` binds it as uvicorn does, ``SO_REUSEADDR`` and all). A client socket that
happens to hold ``--port P``'s neighbour no longer stops a network from starting: the port is
found taken and skipped (:func:`next_free_port`).

Stopping. :func:`terminate` sends SIGTERM to every running child of a group, waits up to the
grace period for all of them together, then SIGKILLs the process group of each one still
running (a child runs in its own session, so its group is its own): docker compose's stop.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "HOST",
    "Child",
    "free_port",
    "next_free_port",
    "port_free",
    "set_option",
    "terminate",
]

HOST = "127.0.0.1"
STOP_TIMEOUT = 20.0
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PORT = 10_000
"""The lowest port :func:`free_port` picks (below it sit well-known development servers)."""


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now. Bound as uvicorn binds
    (``SO_REUSEADDR``), so a listener, a client socket or a bound socket on the port all
    count as taken, and only a port a child could really bind counts as free."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
            s.listen(1)
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    """The lowest port the kernel gives outgoing connections (32768 when unknown)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(avoid: Iterable[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that a server can bind now and that no outgoing connection
    will be given meanwhile (below the kernel's ephemeral range), not in ``avoid``. Falls
    back to a port the OS picks when that range is too small to search."""
    avoided = set(avoid)
    low = _ephemeral_low()
    if low - LOWEST_PORT >= 1000:
        rng = random.SystemRandom()
        for _ in range(200):
            port = rng.randrange(LOWEST_PORT, low)
            if port not in avoided and port_free(port):
                return port
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        if port not in avoided:
            return port


def next_free_port(after: int, avoid: Iterable[int] = ()) -> int:
    """The first port above ``after`` that is free (:func:`port_free`) and not in ``avoid``."""
    avoided = set(avoid)
    for port in range(after + 1, 65536):
        if port not in avoided and port_free(port):
            return port
    raise OSError(f"no free port above {after}")


def set_option(args: list[str], flag: str, value: str) -> None:
    """Replace the value that follows ``flag`` in ``args`` (no-op when ``flag`` is absent)."""
    with contextlib.suppress(ValueError):
        args[args.index(flag) + 1] = value


@dataclass
class Child:
    """One service process: its name, URL, command and log file."""

    name: str
    url: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str | None = None
    operator_key: Path | None = None
    """A node's operator account key (None for the coordinator)."""
    log_index: int | None = None
    """A node's registration entry in the log, as last seen by :class:`LocalNetwork`."""
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def move_to(self, port: int) -> None:
        """Listen on ``port`` from the next start (the URL and ``--port`` argument)."""
        self.url = f"http://{HOST}:{port}"
        set_option(self.args, "--port", str(port))

    def start(self, env: Mapping[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops us in order
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, and SIGKILL if the child is still running ``timeout`` seconds later."""
        terminate([self], grace=timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (for the reliability tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self._close_log()


def _signal_group(child: Child, signum: int) -> None:
    """``signum`` to the child's process group (its own session), else to the child."""
    process = child.process
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signum)
    except OSError:
        with contextlib.suppress(OSError):
            process.send_signal(signum)


def terminate(
    children: Sequence[Child], *, grace: float, hurry: threading.Event | None = None
) -> list[Child]:
    """Stop ``children`` together: SIGTERM to each running one, then SIGKILL (to its process
    group) for each still running ``grace`` seconds later, or as soon as ``hurry`` is set.
    Returns the children that had to be killed."""
    running = [c for c in children if c.alive()]
    for child in running:
        assert child.process is not None
        with contextlib.suppress(OSError):
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + max(0.0, grace)
    while any(c.alive() for c in running) and time.monotonic() < deadline:
        if hurry is not None and hurry.is_set():
            break
        time.sleep(0.05)
    killed = [c for c in running if c.alive()]
    for child in killed:
        _signal_group(child, signal.SIGKILL)
    for child in running:
        assert child.process is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=STOP_TIMEOUT)
    for child in children:
        child._close_log()
    return killed
