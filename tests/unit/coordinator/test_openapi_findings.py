"""What schemathesis found against the live coordinator (tests/integration/
test_schemathesis.py), each kept as a regression test: the answer a route gave, and what its
document now says."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import running_coordinator

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FastAPI]]:
    with running_coordinator(tmp_path_factory.mktemp("coordinator")) as running:
        yield running


@pytest.fixture(scope="module")
def document(coordinator: tuple[str, FastAPI]) -> dict[str, Any]:
    spec: dict[str, Any] = httpx.get(coordinator[0] + "/openapi.json").json()
    return spec


@pytest.mark.parametrize("offset", [2**63, 2**64, 10**40])
def test_a_model_listing_past_a_64_bit_offset_is_a_problem_not_a_server_error(
    coordinator: tuple[str, FastAPI], offset: int
) -> None:
    """SQLite raised OverflowError binding the offset (a 500)."""
    response = httpx.get(coordinator[0] + "/v1/models", params={"offset": offset})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["status"] == 422


def test_the_largest_offset_lists_nothing(coordinator: tuple[str, FastAPI]) -> None:
    response = httpx.get(coordinator[0] + "/v1/models", params={"offset": 2**63 - 1})
    assert response.status_code == 200
    assert response.json()["models"] == []


# (path, method, status, media type): answers the routes gave that their document left out.
ANSWERED: list[tuple[str, str, str, str]] = [
    ("/v1/models", "get", "422", PROBLEM),  # FastAPI's validation error, sent as a problem
    ("/v1/models/{ref}", "get", "404", PROBLEM),
    ("/v1/blobs/{digest}", "get", "200", "application/octet-stream"),
    ("/v1/blobs/{digest}", "get", "206", "application/octet-stream"),
    ("/v1/blobs/{digest}", "get", "400", PROBLEM),
    ("/v1/blobs/{digest}", "get", "416", PROBLEM),
    ("/v1/inferences/{inference_id}/tensors/{digest}", "get", "400", PROBLEM),
    ("/v1/inferences/{inference_id}/tensors/{digest}", "get", "403", PROBLEM),
    ("/v1/inferences/{inference_id}", "get", "403", PROBLEM),
    ("/v1/ledger/state", "get", "404", PROBLEM),
    ("/v1/disputes/{dispute_id}", "get", "404", PROBLEM),
    ("/v1/inferences/{inference_id}", "get", "404", PROBLEM),
    ("/log/checkpoint", "get", "200", "text/plain"),
    ("/log/tile/{rest}", "get", "200", "application/octet-stream"),
    ("/log/tile/{rest}", "get", "400", PROBLEM),
    ("/log/proof/inclusion", "get", "400", PROBLEM),
    ("/log/proof/consistency", "get", "404", PROBLEM),
    ("/metrics", "get", "200", "text/plain"),
    ("/v1/models", "post", "403", PROBLEM),
    ("/v1/inferences", "post", "403", PROBLEM),
    ("/v1/chat/completions", "post", "403", "application/json"),
]


@pytest.mark.parametrize(("path", "method", "status", "media"), ANSWERED)
def test_the_document_names_every_answer_the_route_gives(
    document: dict[str, Any], path: str, method: str, status: str, media: str
) -> None:
    answer = document["paths"][path][method]["responses"][status]
    assert media in answer["content"]


def test_the_documents_header_patterns_are_the_ones_the_routes_enforce(
    document: dict[str, Any],
) -> None:
    """An Idempotency-Key outside the pattern, or an X-Veriml-Payment that is not base64, was
    documented as any string: clients built from the document could not know."""
    for path in ("/v1/inferences", "/v1/chat/completions"):
        headers = {p["name"]: p["schema"] for p in document["paths"][path]["post"]["parameters"]}
        assert headers["Idempotency-Key"]["pattern"] == r"^[A-Za-z0-9._:~+/=-]{1,200}$"
        assert "pattern" in headers["X-Veriml-Payment"]


def test_a_malformed_idempotency_key_is_still_a_400_problem(
    coordinator: tuple[str, FastAPI],
) -> None:
    """The route reads the header itself now (documented with its pattern): the answer to a
    key outside it did not change."""
    response = httpx.post(
        coordinator[0] + "/v1/inferences",
        json={"model": "m", "inputs": {}},
        headers={"Idempotency-Key": "not a key!"},
    )
    assert response.status_code == 400, response.text
    assert "Idempotency-Key" in response.json()["detail"]


def test_the_proof_routes_document_the_query_they_read(document: dict[str, Any]) -> None:
    inclusion = document["paths"]["/log/proof/inclusion"]["get"]["parameters"]
    assert {p["name"] for p in inclusion} == {"size", "index", "hash"}
    consistency = document["paths"]["/log/proof/consistency"]["get"]["parameters"]
    assert {p["name"]: p["required"] for p in consistency} == {"old": True, "new": True}
