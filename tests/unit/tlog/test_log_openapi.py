"""A standalone log's OpenAPI document describes what its routes read and answer: the raw
entry ``POST add`` takes, the query the proof routes read themselves, the checkpoint as text
and tiles as bytes, and every error as a problem."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from veriml.core.keys import generate_key
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.tlog.server import create_log_app


@pytest.fixture
def document(tmp_path: Path) -> Iterator[dict[str, Any]]:
    signer = NoteSigner("example.com/log", generate_key())
    options = LogOptions(batch_interval=0.0)
    with Log.open(f"sqlite:///{tmp_path / 'log.db'}", signer, options=options) as log:
        yield TestClient(create_log_app(log)).get("/openapi.json").json()


def test_add_is_documented_as_one_raw_entry(document: dict[str, Any]) -> None:
    add = document["paths"]["/add"]["post"]
    assert add["requestBody"]["required"]
    assert "application/octet-stream" in add["requestBody"]["content"]
    assert "application/problem+json" in add["responses"]["413"]["content"]


def test_reads_are_documented_with_their_media_types_and_queries(
    document: dict[str, Any],
) -> None:
    paths = document["paths"]
    assert "text/plain" in paths["/checkpoint"]["get"]["responses"]["200"]["content"]
    tile = paths["/tile/{rest}"]["get"]["responses"]
    assert "application/octet-stream" in tile["200"]["content"]
    assert "application/problem+json" in tile["404"]["content"]
    inclusion = paths["/proof/inclusion"]["get"]["parameters"]
    assert {p["name"] for p in inclusion} == {"size", "index", "hash"}
