"""PerHostTransport: each node gets its own keep-alive pool, so a job to one node reuses that
node's connection and never one to another node; closing the client closes every pool."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from fastapi import FastAPI, Request

from _servers import serve
from veriml.coordinator.nodes.dispatch import PerHostTransport


def _peer_app() -> FastAPI:
    app = FastAPI()

    @app.get("/peer")
    async def peer(request: Request) -> dict[str, int]:
        assert request.client is not None
        return {"port": request.client.port}  # the client-side port: one per connection

    return app


def test_each_origin_reuses_its_own_connection_and_close_closes_all() -> None:
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(serve(_peer_app()))
        b = stack.enter_context(serve(_peer_app()))

        async def main() -> tuple[list[int], list[int]]:
            transport = PerHostTransport(limits=httpx.Limits(max_connections=4), max_hosts=2)
            async with httpx.AsyncClient(transport=transport) as http:
                ports_a = [(await http.get(f"{a}/peer")).json()["port"] for _ in range(3)]
                ports_b = [(await http.get(f"{b}/peer")).json()["port"] for _ in range(3)]
                assert len(transport._pools) == 2
            assert transport._pools == {}
            return ports_a, ports_b

        ports_a, ports_b = asyncio.run(main())
    assert len(set(ports_a)) == 1  # kept alive and reused
    assert len(set(ports_b)) == 1
    assert set(ports_a) != set(ports_b)
