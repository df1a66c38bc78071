"""Signed requests carry the headers the coordinator checks (docs/network.md)."""

from __future__ import annotations

import pytest

from veriml.client._requests import request_headers, stream_digest
from veriml.coordinator.auth import RequestSignature, sign_request
from veriml.core.digest import Digest
from veriml.core.errors import SignatureError
from veriml.core.keys import generate_key


@pytest.mark.parametrize("kind", ["ed25519", "ec"])
def test_client_request_signatures_verify_as_the_coordinator_checks_them(kind: str) -> None:
    key = generate_key(kind)  # type: ignore[arg-type]
    body = b'{"model":"m"}'
    headers = request_headers(key, "POST", "/v1/inferences", Digest.of(body))
    signature = RequestSignature.from_headers(headers)
    assert signature is not None
    assert signature.verify("POST", "/v1/inferences", Digest.of(body)) == key.key_id
    with pytest.raises(SignatureError):
        signature.verify("POST", "/v1/inferences", Digest.of(body + b" "))
    if kind == "ed25519":  # deterministic signatures: byte-identical to the coordinator's helper
        assert headers == sign_request(key, "POST", "/v1/inferences", body)


def test_a_streamed_digest_is_the_digest_of_the_whole() -> None:
    chunks = [b"a" * 10, b"", b"b" * 70000, b"c"]
    assert stream_digest(iter(chunks)) == Digest.of(b"".join(chunks))
