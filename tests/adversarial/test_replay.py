"""Red team: a captured signed request cannot be spent twice (docs/threat-model.md §8).

Every signed route uses RFC 9421 signatures with a nonce the coordinator remembers in its
database (docs/network.md, "Signed requests"). Attacks, each of which must fail:

- a captured signed inference sent again under a new ``Idempotency-Key`` (before, a header the
  signature did not cover: it was answered, logged and charged again): refused, the key is
  covered; sent again under its own key, it gets the stored answer, and nothing runs twice;
- the key dropped, or another meaningful header added: refused;
- a signed request with no ``Idempotency-Key`` sent again: refused by its nonce, also after
  the coordinator restarts and on another replica sharing its database;
- a signature that has expired, or that claims a validity longer than the window: refused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from _coordinator import make_signed_model, running_coordinator
from _servers import free_port, serve
from veriml.client import Client, LocalNetwork
from veriml.coordinator.app import create_app
from veriml.coordinator.auth import sign_request
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.keys import SigningKey, generate_key
from veriml.core.tensors import tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.http_signatures import sign_request as sign_http

X = [[0.1, 0.2, 0.3, 0.4]]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    tmp = tmp_path_factory.mktemp("replay")
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 8, 3), seed=2), name="mlp")
    key = tmp / "publisher.key"
    generate_key("ec").save(key)
    with LocalNetwork(tmp / "net", nodes=1, port=0, witnesses=0) as network:
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, key)
        yield network


def _log_size(url: str) -> int:
    return int(httpx.get(url + "/log/checkpoint").text.splitlines()[1])


def _inference(
    net: LocalNetwork, key: SigningKey, request_id: str | None
) -> tuple[bytes, dict[str, str]]:
    """A signed inference request: its body and headers, as captured on the wire."""
    model = httpx.get(net.url + "/v1/models/mlp").json()
    name = str(model["io"]["inputs"][0]["name"])
    x = tensor_to_json(np.asarray(X, dtype=np.float32))
    data = json.dumps({"model": "mlp", "inputs": {name: x}}).encode()
    extra = {"Content-Type": "application/json"}
    if request_id is not None:
        extra["Idempotency-Key"] = request_id
    return data, sign_request(key, "POST", net.url + "/v1/inferences", data, extra)


def test_a_captured_inference_cannot_be_spent_under_another_idempotency_key(
    net: LocalNetwork,
) -> None:
    client = generate_key()
    data, headers = _inference(net, client, "captured-1")
    first = httpx.post(net.url + "/v1/inferences", content=data, headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    assert first.json()["request"] == {"client": client.key_id}
    size = _log_size(net.url)
    # The attacker's moves: another key, no key, another bound header.
    for changed in (
        headers | {"Idempotency-Key": "captured-2"},
        {k: v for k, v in headers.items() if k != "Idempotency-Key"},
        headers | {"X-Veriml-Epoch": "0"},
    ):
        refused = httpx.post(net.url + "/v1/inferences", content=data, headers=changed)
        assert refused.status_code == 403, refused.text
        assert refused.json()["check"] == "request-signature"
    # The same request again (a retry whose answer was lost): the stored answer, nothing new.
    again = httpx.post(net.url + "/v1/inferences", content=data, headers=headers, timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first.json()["id"] == "captured-1"
    assert again.json()["log"]["index"] == first.json()["log"]["index"]
    assert _log_size(net.url) == size


def test_a_signed_request_without_an_idempotency_key_is_spent_once(net: LocalNetwork) -> None:
    client = generate_key()
    data, headers = _inference(net, client, None)
    first = httpx.post(net.url + "/v1/inferences", content=data, headers=headers, timeout=60)
    assert first.status_code == 200, first.text
    size = _log_size(net.url)
    replayed = httpx.post(net.url + "/v1/inferences", content=data, headers=headers, timeout=60)
    assert replayed.status_code == 403, replayed.text
    assert replayed.json()["check"] == "request-replay"
    assert _log_size(net.url) == size


def test_a_spent_nonce_stays_spent_across_restarts_and_replicas(tmp_path: Path) -> None:
    model = make_signed_model(tmp_path, name="replayed", version="1")
    settings = Settings(home=tmp_path / "home")
    port = free_port()
    body = model.tar()
    with serve(create_app(settings), port=port) as url:
        headers = model.upload_headers(body, url)
        assert httpx.post(url + "/v1/models", content=body, headers=headers).status_code == 201
    # The captured request, byte for byte, to the coordinator restarted on its database.
    with serve(create_app(settings), port=port) as url:
        refused = httpx.post(url + "/v1/models", content=body, headers=headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["check"] == "request-replay"
        # A second replica on the same database (another address, so the signer's nonce is
        # what is repeated: the replicas share what they remember).
        with serve(create_app(settings)) as replica:
            again = sign_http(
                model.key,
                "POST",
                replica + "/v1/models",
                Digest.of(body),
                model.headers,
                nonce=_nonce(headers),
            )
            refused = httpx.post(
                replica + "/v1/models", content=body, headers=model.headers | again
            )
            assert refused.status_code == 403, refused.text
            assert refused.json()["check"] == "request-replay"


def test_an_expired_or_overlong_signature_is_refused(tmp_path: Path) -> None:
    model = make_signed_model(tmp_path, name="late", version="1")
    body = model.tar()
    with running_coordinator(tmp_path / "home") as (url, _):
        long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)
        late = model.headers | sign_http(
            model.key, "POST", url + "/v1/models", Digest.of(body), model.headers, now=long_ago
        )
        refused = httpx.post(url + "/v1/models", content=body, headers=late)
        assert refused.status_code == 403
        assert refused.json()["check"] == "request-signature"
        # A signature claiming a day of validity (hand-made: the signer refuses to make one).
        fresh = model.upload_headers(body, url)
        overlong = fresh | {
            "Signature-Input": fresh["Signature-Input"].replace(
                f"expires={_params(fresh)['expires']}",
                f"expires={int(_params(fresh)['created']) + 86400}",
            )
        }
        refused = httpx.post(url + "/v1/models", content=body, headers=overlong)
        assert refused.status_code == 403


def _params(headers: dict[str, str]) -> dict[str, str]:
    params = headers["Signature-Input"].split(";")[1:]
    return dict(p.split("=", 1) for p in params)


def _nonce(headers: dict[str, str]) -> str:
    return _params(headers)["nonce"].strip('"')
