"""A TCP proxy on loopback that drops chosen connections, for tests of what a client does when
a connection breaks: before the server saw the request, or after the server answered it but
before the answer reached the client (the case where a retry must not run the request twice).

    with flaky_proxy(url, drop=b"POST /v1/inferences", when="answer") as proxy:
        Client(proxy.url, ...)  # the first POST reaches the server; its answer never comes back
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from _servers import HOST

When = Literal["request", "answer"]


@dataclass
class FlakyProxy:
    """What the proxy did: connections accepted, and connections it dropped."""

    url: str = ""
    connections: int = 0
    dropped: int = 0
    _drop: bytes = b""
    _drops_left: int = 0
    _when: When = "answer"
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _open: set[asyncio.Transport] = field(default_factory=set)

    def _doom(self, chunk: bytes) -> bool:
        """Whether this chunk of a request starts one the proxy is to drop (counted once)."""
        with self._lock:
            if self._drops_left > 0 and chunk.startswith(self._drop):
                self._drops_left -= 1
                self.dropped += 1
                return True
        return False


async def _relay(
    proxy: FlakyProxy,
    upstream: tuple[str, int],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    proxy.connections += 1
    try:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
    except OSError:
        writer.transport.abort()
        return
    ends = {writer.transport, up_writer.transport}
    proxy._open |= ends  # type: ignore[arg-type]
    doomed = asyncio.Event()

    def cut() -> None:
        writer.transport.abort()  # a reset, as when a server or a middlebox dies
        up_writer.transport.abort()

    async def to_server() -> None:
        while data := await reader.read(65536):
            if proxy._doom(data):
                if proxy._when == "request":
                    cut()
                    return
                doomed.set()
            up_writer.write(data)
            await up_writer.drain()

    async def to_client() -> None:
        while data := await up_reader.read(65536):
            if doomed.is_set():  # the server answered the doomed request: lose its answer
                cut()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(to_server(), to_client())
    except (ConnectionError, OSError):
        pass
    finally:
        cut()
        proxy._open -= ends  # type: ignore[arg-type]


@contextlib.contextmanager
def flaky_proxy(
    target: str, *, drop: bytes, when: When = "answer", times: int = 1
) -> Iterator[FlakyProxy]:
    """A proxy on 127.0.0.1 to the server at ``target`` (``http://host:port``) that drops the
    first ``times`` connections whose request starts with ``drop``: ``when="request"`` before
    the server sees it, ``when="answer"`` once the server starts answering it."""
    parts = urlsplit(target)
    upstream = (parts.hostname or HOST, parts.port or 80)
    proxy = FlakyProxy(_drop=drop, _drops_left=times, _when=when)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    server: asyncio.Server | None = None

    async def main() -> None:
        nonlocal server
        server = await asyncio.start_server(lambda r, w: _relay(proxy, upstream, r, w), HOST, 0)
        proxy.url = f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(main(), loop).result(10)
    started.wait(10)
    try:
        yield proxy
    finally:

        async def stop() -> None:
            assert server is not None
            server.close()
            for transport in list(proxy._open):
                transport.abort()  # each relay then ends on its own
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
