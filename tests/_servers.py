"""Servers on loopback for the tests: a free port, an ASGI app in a thread, a server process.

Each helper is a context manager that always stops what it started, even when the block (or
the wait for the server to come up) fails, so a failing test never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from veriml.client._children import free_port

HOST = "127.0.0.1"


class _ThreadServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a server in a thread leaves signals alone
        pass


@contextlib.contextmanager
def serve(app: Any, *, port: int | None = None, start_timeout: float = 10) -> Iterator[str]:
    """Run the ASGI ``app`` with uvicorn in a thread on 127.0.0.1 (on ``port``, or a free one);
    yield its base URL ``http://127.0.0.1:PORT``; stop it when the block ends."""
    port = free_port() if port is None else port
    server = _ThreadServer(uvicorn.Config(app, host=HOST, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + start_timeout
        while not server.started:
            assert thread.is_alive(), "server failed to start"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def start_process(
    args: Sequence[str],
    *,
    url_to_poll: str,
    ready_status: int = 200,
    timeout: float = 60,
    output: Path | None = None,
) -> Iterator[subprocess.Popen[str]]:
    """Start the server process ``args``; wait until ``url_to_poll`` answers ``ready_status``;
    yield the process; terminate it (kill it if it lingers) when the block ends.

    Its stdout and stderr go to a pipe, or are appended to the file ``output``; either is shown
    if the process exits before it is ready.
    """
    with contextlib.ExitStack() as stack:
        out = subprocess.PIPE if output is None else stack.enter_context(output.open("ab"))
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, text=True)
        stack.callback(_stop, proc)
        command = " ".join(args)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                shown = output.read_text()[-2000:] if output else _read_all(proc)
                raise AssertionError(f"{command} exited before it was ready:\n{shown}")
            assert time.monotonic() < deadline, f"{command} did not start within {timeout} s"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url_to_poll, timeout=1).status_code == ready_status:
                    break
            time.sleep(0.1)
        yield proc


def _read_all(proc: subprocess.Popen[str]) -> str:
    return proc.stdout.read() if proc.stdout else ""


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    if proc.stdout:
        proc.stdout.close()
