"""Listings follow the coordinator's paging to the end, and publishing and pulling a model report
their progress as the bytes go (docs/sdk.md, "Listings and long uploads").

Against a real coordinator on loopback where the paging is the coordinator's own (models), and
against a small server answering recorded ``/v1/nodes`` bodies for the scheme nodes share
(``limit`` and ``offset`` asked, ``next_offset`` answered) and for servers that page wrongly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from _coordinator import SignedModel, make_signed_model, running_coordinator
from _servers import serve
from veriml.client import AsyncClient, Client
from veriml.client._publish import tar_size
from veriml.client._pull import cached_model
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, LimitExceededError

MODELS = 5

# A /v1/nodes answer as a coordinator that does not page gives it (recorded), and its nodes.
NODE = {
    "id": "ed25519:0f3a",
    "endpoint": "http://127.0.0.1:9001",
    "live": True,
    "models": ["*"],
}
UNPAGED = {"nodes": [NODE | {"id": f"ed25519:{i:04x}"} for i in range(3)], "heartbeat_interval": 5}


def _publish(root: Path, count: int) -> list[SignedModel]:
    return [make_signed_model(root, name=f"m{i}", seed=i) for i in range(count)]


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, list[SignedModel]]]:
    """A real coordinator holding nothing yet, and the signed models to publish to it."""
    with running_coordinator(tmp_path / "home") as (url, _):
        yield url, _publish(tmp_path / "models", MODELS)


def _key(model: SignedModel) -> Path:
    return next(model.folder.parent.glob(f"{model.folder.name}.key"))


def test_publish_reports_progress_and_models_follows_every_page(
    hub: tuple[str, list[SignedModel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, models = hub
    monkeypatch.setattr("veriml.client._base.LIST_PAGE_SIZE", 2)
    calls: list[tuple[int, int | None]] = []
    with Client(url, verify=False, checkpoints=False) as client:
        for model in models:
            calls.clear()
            client.publish(model.folder, _key(model), progress=lambda d, t: calls.append((d, t)))
            total = tar_size(model.folder)
            assert calls[0] == (0, total)
            assert calls[-1] == (total, total)
            done = [d for d, _ in calls]
            assert done == sorted(done)
            assert len(calls) > 2
        listed = client.models()
        assert len(listed) == MODELS
        assert {m["name"] for m in listed} == {f"m{i}" for i in range(MODELS)}
        assert [m["name"] for m in client.models(name="m3")] == ["m3"]
        assert client.nodes() == []  # the coordinator's unpaged answer


def test_the_async_client_follows_every_page_too(
    hub: tuple[str, list[SignedModel]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, models = hub
    monkeypatch.setattr("veriml.client._base.LIST_PAGE_SIZE", 2)
    done: list[int] = []

    async def run() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with AsyncClient(url, verify=False, checkpoints=False) as client:
            for model in models:
                await client.publish(
                    model.folder, _key(model), progress=lambda d, _: done.append(d)
                )
            return await client.models(), await client.nodes()

    listed, nodes = asyncio.run(run())
    assert len(listed) == MODELS
    assert nodes == []
    assert done[-1] == tar_size(models[-1].folder)


def _nodes_server(pages: str, seen: list[dict[str, str]]) -> FastAPI:
    """``/v1/nodes`` answered ``unpaged`` (the recorded body), ``paged`` (that body's nodes
    by ``limit`` and ``offset``), ``forever`` (always another page) or ``stuck`` (a
    ``next_offset`` that does not move)."""
    app = FastAPI()

    @app.get("/v1/nodes")
    def nodes(request: Request) -> dict[str, Any]:
        query = dict(request.query_params)
        seen.append(query)
        if pages == "unpaged":
            return UNPAGED
        limit, offset = int(query["limit"]), int(query.get("offset", 0))
        if pages == "forever":
            return {"nodes": [NODE], "next_offset": offset + limit}
        if pages == "stuck":
            return {"nodes": [NODE], "next_offset": offset}
        found = UNPAGED["nodes"][offset : offset + limit + 1]
        following = offset + limit if len(found) > limit else None
        return {"nodes": found[:limit], "heartbeat_interval": 5, "next_offset": following}

    return app


def test_nodes_reads_an_unpaged_answer_whole() -> None:
    seen: list[dict[str, str]] = []
    with serve(_nodes_server("unpaged", seen)) as url, Client(url, verify=False) as client:
        assert client.nodes() == UNPAGED["nodes"]
    assert len(seen) == 1


def test_nodes_follows_pages_to_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("veriml.client._base.LIST_PAGE_SIZE", 2)
    seen: list[dict[str, str]] = []
    with serve(_nodes_server("paged", seen)) as url:
        with Client(url, verify=False) as client:
            assert client.nodes() == UNPAGED["nodes"]

        async def run() -> list[dict[str, Any]]:
            async with AsyncClient(url, verify=False) as client:
                return await client.nodes()

        assert asyncio.run(run()) == UNPAGED["nodes"]
    assert [q["offset"] for q in seen] == ["0", "2"] * 2
    assert {q["limit"] for q in seen} == {"2"}


def test_a_server_that_pages_forever_or_stands_still_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("veriml.client._base.MAX_LIST_PAGES", 4)
    seen: list[dict[str, str]] = []
    with (
        serve(_nodes_server("forever", seen)) as url,
        Client(url, verify=False) as client,
        pytest.raises(LimitExceededError),
    ):
        client.nodes()
    assert len(seen) == 4
    with (
        serve(_nodes_server("stuck", seen)) as url,
        Client(url, verify=False) as client,
        pytest.raises(FormatError),
    ):
        client.nodes()


def test_a_model_pull_reports_its_bytes_against_the_hubs_size(
    hub: tuple[str, list[SignedModel]], tmp_path: Path
) -> None:
    url, models = hub
    with Client(url, verify=False, checkpoints=False) as client:
        published = client.publish(models[0].folder, _key(models[0]))
    digest = Digest.from_text(published["digest"])
    calls: list[tuple[int, int | None]] = []
    package = cached_model(
        url, digest, tmp_path / "pulled", max_bytes=1 << 30, progress=lambda *c: calls.append(c)
    )
    assert package.digest == digest
    size = published["size"]
    assert calls[-1] == (size, size)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert {t for _, t in calls} == {size}
    calls.clear()  # from the cache, nothing to pull
    assert cached_model(url, digest, tmp_path / "pulled", max_bytes=1 << 30).digest == digest
    assert calls == []
