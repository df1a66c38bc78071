"""Signed requests carry the headers the coordinator checks (docs/network.md)."""

from __future__ import annotations

import pytest

from veriml.client._requests import request_headers, stream_digest
from veriml.core.digest import Digest
from veriml.core.errors import SignatureError
from veriml.core.keys import generate_key
from veriml.protocol.http_signatures import verify_request

URL = "http://127.0.0.1:8700/v1/inferences"


@pytest.mark.parametrize("kind", ["ed25519", "ec"])
def test_client_request_signatures_verify_as_the_coordinator_checks_them(kind: str) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    body = b'{"model":"m"}'
    extra = {"Idempotency-Key": "req-1", "X-Veriml-Epoch": "7", "Content-Type": "x"}
    headers = request_headers(key, "POST", URL, Digest.of(body), extra)
    assert headers.items() >= extra.items()
    signed = verify_request("POST", URL, list(headers.items()))
    assert signed is not None
    assert signed.check_body(Digest.of(body)) == key.key_id
    with pytest.raises(SignatureError):
        signed.check_body(Digest.of(body + b" "))
    with pytest.raises(SignatureError):  # the epoch the client named is covered
        verify_request("POST", URL, list((headers | {"X-Veriml-Epoch": "8"}).items()))


def test_a_streamed_digest_is_the_digest_of_the_whole() -> None:
    chunks = [b"a" * 10, b"", b"b" * 70000, b"c"]
    assert stream_digest(iter(chunks)) == Digest.of(b"".join(chunks))
