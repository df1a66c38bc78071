"""``GET /v1/nodes`` pages as ``GET /v1/models`` does: ``limit`` and ``offset`` in,
``next_offset`` out (None on the last page); following it lists every node once, by id."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import running_coordinator
from veriml.core.keys import generate_key
from veriml.protocol.accounts import OperatorBinding
from veriml.protocol.messages import NodeDescriptor, format_time

NODES = 5


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, FastAPI]]:
    with running_coordinator(tmp_path / "home") as running:
        url, _ = running
        operator = generate_key()
        for port in range(NODES):
            key = generate_key()
            descriptor = NodeDescriptor(
                public_key=key.public.to_pem().decode(),
                operator_binding=OperatorBinding.of(operator, key.key_id).sign(operator),
                endpoint=f"http://127.0.0.1:{9001 + port}",
                issued_at=format_time(dt.datetime.now(dt.UTC)),
                nonce=secrets.token_hex(16),
                models=("*",),
            ).sign(key)
            response = httpx.post(url + "/v1/nodes", json=descriptor.to_json())
            assert response.status_code == 201, response.text
        yield running


def test_following_next_offset_lists_every_node_once_in_id_order(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    listed: list[str] = []
    offset: int | None = 0
    pages = 0
    while offset is not None:
        body = httpx.get(url + "/v1/nodes", params={"limit": 2, "offset": offset}).json()
        assert len(body["nodes"]) <= 2
        assert body["heartbeat_interval"] > 0
        listed += [node["node_id"] for node in body["nodes"]]
        offset = body["next_offset"]
        pages += 1
    assert pages == 3
    assert len(listed) == NODES
    assert listed == sorted(set(listed))


def test_without_parameters_one_page_of_up_to_100_nodes_is_the_last(
    coordinator: tuple[str, FastAPI],
) -> None:
    url, _ = coordinator
    body = httpx.get(url + "/v1/nodes").json()
    assert len(body["nodes"]) == NODES
    assert body["next_offset"] is None


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}])
def test_a_limit_or_offset_out_of_range_is_422_as_for_models(
    coordinator: tuple[str, FastAPI], params: dict[str, int]
) -> None:
    url, _ = coordinator
    for path in ("/v1/nodes", "/v1/models"):
        assert httpx.get(url + path, params=params).status_code == 422
