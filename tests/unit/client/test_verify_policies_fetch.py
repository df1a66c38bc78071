"""Tensors fetched by digest (``Client.tensor``, ``GET /v1/inferences/{id}/tensors/{digest}``)
are checked by hashing what was served: the canonical encoding's SHA-256 is the tensor digest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from _servers import serve
from veriml.client import AsyncClient, Client
from veriml.core.digest import Digest
from veriml.core.errors import DigestMismatchError, NotFoundError
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest

STORED = np.arange(12, dtype=np.float32).reshape(3, 4)
OTHER = np.zeros((3, 4), dtype=np.float32)


@pytest.fixture(scope="module")
def coordinator() -> Iterator[str]:
    """Serves STORED under its digest, and OTHER's bytes under STORED + 1's digest (a lie)."""
    lie = tensor_digest(STORED + np.float32(1))
    app = FastAPI()

    @app.get("/v1/inferences/{inference}/tensors/{digest}")
    def get_tensor(inference: str, digest: str) -> Response:
        wanted = Digest.from_text(digest)
        if wanted == tensor_digest(STORED):
            return Response(canonical_tensor_bytes(STORED), media_type="application/octet-stream")
        if wanted == lie:
            return Response(canonical_tensor_bytes(OTHER), media_type="application/octet-stream")
        return Response(b'{"title": "no such tensor"}', status_code=404)

    with serve(app) as url:
        yield url


def test_a_stored_tensor_comes_back_equal(coordinator: str) -> None:
    with Client(coordinator, verify=False) as client:
        fetched = client.tensor(tensor_digest(STORED), inference="req-1")
        by_text = client.tensor(tensor_digest(STORED).to_text(), inference="req-1")
    assert fetched.dtype == STORED.dtype
    np.testing.assert_array_equal(fetched, STORED)
    np.testing.assert_array_equal(by_text, STORED)


def test_bytes_that_do_not_hash_to_the_digest_are_refused(coordinator: str) -> None:
    wanted = tensor_digest(STORED + np.float32(1))
    with Client(coordinator, verify=False) as client, pytest.raises(DigestMismatchError) as caught:
        client.tensor(wanted, inference="req-1")
    assert caught.value.check == "tensor"
    assert caught.value.evidence["expected"] == wanted
    assert caught.value.evidence["calculated"] == tensor_digest(OTHER)


def test_the_async_client_checks_the_same_way(coordinator: str) -> None:
    async def fetch() -> None:
        async with AsyncClient(coordinator, verify=False) as client:
            got = await client.tensor(tensor_digest(STORED), inference="req-1")
            np.testing.assert_array_equal(got, STORED)
            with pytest.raises(DigestMismatchError):
                await client.tensor(tensor_digest(STORED + np.float32(1)), inference="req-1")
            with pytest.raises(NotFoundError):
                await client.tensor(tensor_digest(OTHER), inference="req-1")

    asyncio.run(fetch())
