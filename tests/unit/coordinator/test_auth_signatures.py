"""Request signatures (RFC 9421): a signed request verifies to its signer's key id; a signature
over another method, URL, body or header set, an expired one, one valid for too long or one
with its parts missing is refused, never ignored; a publisher that signs its upload is recorded
by key id."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _coordinator import SignedModel, make_signed_model, running_coordinator
from veriml.coordinator.auth import sign_request
from veriml.core.digest import Digest
from veriml.core.errors import SignatureError
from veriml.core.keys import generate_key
from veriml.protocol.http_signatures import (
    KEY_HEADER,
    MAX_WINDOW,
    content_digest_header,
    verify_request,
)
from veriml.protocol.http_signatures import sign_request as sign_http

ED25519 = generate_key("ed25519")
EC = generate_key("ec")
EC384 = generate_key("ec", curve="P-384")
URL = "http://127.0.0.1:8700/v1/inferences"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("signed"))


def _verify(method: str, url: str, headers: dict[str, str]) -> str:
    signed = verify_request(method, url, list(headers.items()))
    assert signed is not None
    return signed.key_id


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT"]),
    path=st.text(alphabet="abc_-@:0123456789", min_size=1, max_size=40).map(lambda p: "/" + p),
    body=st.binary(max_size=256),
    key=st.sampled_from([ED25519, EC, EC384]),
    idempotency=st.none() | st.text(alphabet="abcXYZ019-_", min_size=1, max_size=20),
)
def test_a_signed_request_verifies_to_its_key_id_and_nothing_else_does(
    method: str, path: str, body: bytes, key: object, idempotency: str | None
) -> None:
    url = "http://127.0.0.1:8700" + path
    extra = {} if idempotency is None else {"Idempotency-Key": idempotency}
    headers = sign_request(key, method, url, body, extra)  # type: ignore[arg-type]
    signed = verify_request(method, url, list(headers.items()))
    assert signed is not None
    assert signed.check_body(Digest.of(body)) == key.key_id  # type: ignore[attr-defined]
    with pytest.raises(SignatureError):
        signed.check_body(Digest.of(body + b"x"))
    for other_method, other_url in ((method, url + "x"), ("DELETE", url)):
        with pytest.raises(SignatureError):
            verify_request(other_method, other_url, list(headers.items()))
    with pytest.raises(SignatureError):  # another authority
        verify_request(method, url.replace("8700", "8701"), list(headers.items()))
    # A bound header added, changed or dropped breaks the signature.
    changed = headers | {"Idempotency-Key": (idempotency or "") + "2"}
    with pytest.raises(SignatureError):
        verify_request(method, url, list(changed.items()))
    if idempotency is not None:
        dropped = {k: v for k, v in headers.items() if k != "Idempotency-Key"}
        with pytest.raises(SignatureError):
            verify_request(method, url, list(dropped.items()))


def test_an_unsigned_request_is_none_and_half_a_signature_is_refused() -> None:
    headers = sign_request(ED25519, "POST", URL, b"")
    assert verify_request("POST", URL, [("content-type", "application/json")]) is None
    for kept in ([KEY_HEADER], ["Signature"], ["Signature-Input", "Signature"]):
        with pytest.raises(SignatureError, match="needs"):
            verify_request("POST", URL, [(k, headers[k]) for k in kept])


def test_a_signature_by_another_key_than_the_one_given_is_refused() -> None:
    headers = sign_request(ED25519, "POST", URL, b"")
    other = sign_request(EC, "POST", URL, b"")
    with pytest.raises(SignatureError):
        verify_request("POST", URL, list((headers | {KEY_HEADER: other[KEY_HEADER]}).items()))


def test_expired_future_and_overlong_signatures_are_refused() -> None:
    now = dt.datetime.now(dt.UTC)
    digest = Digest.of(b"{}")
    old = sign_http(ED25519, "POST", URL, digest, now=now - dt.timedelta(seconds=MAX_WINDOW + 60))
    future = sign_http(ED25519, "POST", URL, digest, now=now + dt.timedelta(seconds=600))
    for headers in (old, future):
        with pytest.raises(SignatureError):
            verify_request("POST", URL, list(headers.items()))
    with pytest.raises(SignatureError, match="window"):
        sign_http(ED25519, "POST", URL, digest, window=MAX_WINDOW + 1)


def test_the_content_digest_is_rfc_9530s() -> None:
    # RFC 9530 Appendix B.1: the sha-256 of {"hello": "world"}\n.
    body = b'{"hello": "world"}\n'
    assert content_digest_header(Digest.of(body)) == (
        "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
    )


def test_a_signed_publication_records_the_signer(tmp_path: Path, model: SignedModel) -> None:
    body = model.tar()
    with running_coordinator(tmp_path / "home") as (url, _):
        signed = model.upload_headers(body, url)
        record = httpx.post(url + "/v1/models", content=body, headers=signed)
        assert record.status_code == 201, record.text
        assert record.json()["submitted_by"] == model.key.key_id
        # Sent again, the same signed request is a replay: refused by its nonce.
        again = httpx.post(url + "/v1/models", content=body, headers=signed)
        assert again.status_code == 403
        assert again.json()["check"] == "request-replay"


def test_a_signature_over_another_body_is_403_and_registers_nothing(
    tmp_path: Path, model: SignedModel
) -> None:
    body = model.tar()
    with running_coordinator(tmp_path / "home", require_signed_publish=False) as (url, _):
        size = httpx.get(url + "/healthz").json()["log_size"]
        for key in (model.key, ED25519):  # never ignored, whoever signed
            wrong = sign_request(key, "POST", url + "/v1/models", body + b"\0", model.headers)
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
        by_another = sign_request(EC, "POST", url + "/v1/models", body, model.headers)
        assert httpx.post(url + "/v1/models", content=body, headers=by_another).status_code == 403
        # The publisher key header is covered: it cannot be swapped under a signature.
        swapped = model.upload_headers(body, url) | SignedModel(model.folder, EC).headers
        assert httpx.post(url + "/v1/models", content=body, headers=swapped).status_code == 403
        signed = model.upload_headers(body, url)
        assert httpx.post(url + "/v1/models", content=body, headers=signed).status_code == 201
