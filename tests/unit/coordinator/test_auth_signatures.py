"""Request signatures: a publisher that signs its upload is recorded by key id; a signature
that does not verify (other body, other path, other key) is refused, never ignored."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _coordinator import SignedModel, make_signed_model, running_coordinator
from veriml.coordinator.auth import (
    KEY_HEADER,
    SIGNATURE_HEADER,
    RequestSignature,
    sign_request,
)
from veriml.core.digest import Digest
from veriml.core.errors import SignatureError
from veriml.core.keys import generate_key

ED25519 = generate_key("ed25519")
EC = generate_key("ec")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("signed"))


@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.text(alphabet="abc/_-@:0123456789", min_size=1, max_size=40).map(lambda p: "/" + p),
    body=st.binary(max_size=256),
    ec=st.booleans(),
)
def test_a_signed_request_verifies_to_its_key_id(
    method: str, path: str, body: bytes, ec: bool
) -> None:
    key = EC if ec else ED25519
    parsed = RequestSignature.from_headers(
        {k.lower(): v for k, v in sign_request(key, method, path, body).items()}
    )
    assert parsed is not None
    assert parsed.verify(method, path, Digest.of(body)) == key.key_id
    with pytest.raises(SignatureError):
        parsed.verify(method, path + "x", Digest.of(body))
    with pytest.raises(SignatureError):
        parsed.verify(method, path, Digest.of(body + b"x"))


def test_half_a_signature_or_a_mismatched_key_id_is_refused() -> None:
    headers = {k.lower(): v for k, v in sign_request(ED25519, "POST", "/v1/models", b"").items()}
    assert RequestSignature.from_headers({}) is None
    with pytest.raises(SignatureError, match="both"):
        RequestSignature.from_headers({KEY_HEADER.lower(): headers[KEY_HEADER.lower()]})
    other = sign_request(EC, "POST", "/v1/models", b"")[SIGNATURE_HEADER]
    with pytest.raises(SignatureError, match="another key"):
        RequestSignature.from_headers(headers | {SIGNATURE_HEADER.lower(): other})


def test_a_signed_publication_records_the_signer(tmp_path: Path, model: SignedModel) -> None:
    body = model.tar()
    with running_coordinator(tmp_path / "home") as (url, _):
        signed = model.headers | sign_request(model.key, "POST", "/v1/models", body)
        record = httpx.post(url + "/v1/models", content=body, headers=signed)
        assert record.status_code == 201, record.text
        assert record.json()["submitted_by"] == model.key.key_id


def test_a_signature_over_another_body_is_403_and_registers_nothing(
    tmp_path: Path, model: SignedModel
) -> None:
    body = model.tar()
    with running_coordinator(tmp_path / "home", require_signed_publish=False) as (url, _):
        size = httpx.get(url + "/healthz").json()["log_size"]
        for key in (model.key, ED25519):  # never ignored, whoever signed
            wrong = model.headers | sign_request(key, "POST", "/v1/models", body + b"\0")
            refused = httpx.post(url + "/v1/models", content=body, headers=wrong)
            assert refused.status_code == 403
            assert refused.json()["check"] == "request-signature"
        assert httpx.get(url + "/healthz").json()["log_size"] == size


def test_a_hub_requires_publications_signed_by_the_publisher_by_default(
    tmp_path: Path, model: SignedModel
) -> None:
    body = model.tar()
    with running_coordinator(tmp_path / "home") as (url, _):
        refused = httpx.post(url + "/v1/models", content=body, headers=model.headers)
        assert refused.status_code == 403
        by_another = model.headers | sign_request(EC, "POST", "/v1/models", body)
        assert httpx.post(url + "/v1/models", content=body, headers=by_another).status_code == 403
        signed = model.headers | sign_request(model.key, "POST", "/v1/models", body)
        assert httpx.post(url + "/v1/models", content=body, headers=signed).status_code == 201
