"""Red team: what a request leaves is its requester's (docs/threat-model.md §9, docs/privacy.md).

Before, every input tensor, output and trace was readable by anyone who knew the request id or
a digest, and those sit in the public log. Attacks, each of which must fail:

- a stranger reads a private answer, or its inputs, by its id: refused (403 ``access``),
  unsigned, signed by another key, or with a made-up capability;
- a stranger reads a private input through the hub's blob route by its logged digest: 404,
  inputs are not hub blobs;
- a stranger repeats the requester's ``Idempotency-Key`` with the same inputs, to be handed
  the stored answer: refused (409), whoever the requester was;
- the log is read for the inputs: it holds their digests only.

What must still work: the requester reads its own request (its key, or the capability the
answer came with, without a key), and anyone reads a request its requester made public.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from _logread import logged_entries
from veriml.client import Client, LocalNetwork
from veriml.coordinator.auth import CAPABILITY_HEADER, sign_request
from veriml.core.digest import Digest
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol.http_signatures import sign_request as sign_http

# A value no model weight or digest is likely to print: found in a log entry, it leaked.
SECRET = np.asarray([[4242.125, -1717.0625, 9191.5, 3131.25]], dtype=np.float32)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    tmp = tmp_path_factory.mktemp("privacy")
    folder = write_example_folder(tmp / "mlp", build_mlp((4, 8, 3), seed=6), name="mlp")
    key = tmp / "publisher.key"
    generate_key("ec").save(key)
    with LocalNetwork(tmp / "net", nodes=1, port=0, witnesses=0) as network:
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, key)
        yield network


def _input_name(net: LocalNetwork) -> str:
    return str(httpx.get(net.url + "/v1/models/mlp").json()["io"]["inputs"][0]["name"])


def _get(url: str, **headers: str) -> httpx.Response:
    return httpx.get(url, headers=headers, timeout=30)


def _signed_get(url: str, key: object) -> httpx.Response:
    return httpx.get(url, headers=sign_http(key, "GET", url, Digest.of(b"")), timeout=30)  # type: ignore[arg-type]


def test_a_private_request_is_its_requesters_alone(net: LocalNetwork) -> None:
    owner = generate_key()
    name = _input_name(net)
    with Client(net.url, log_vkey=net.log_vkey, key=owner) as client:
        answer = client.infer("mlp", {name: SECRET})
        # The requester reads it back, by its key.
        assert client.inference(answer.id).id == answer.id
        digest = tensor_digest(SECRET)
        np.testing.assert_array_equal(client.tensor(digest, inference=answer.id), SECRET)
    answer_url = f"{net.url}/v1/inferences/{answer.id}"
    input_url = f"{answer_url}/tensors/{digest.to_text()}"
    stranger = generate_key()
    for url in (answer_url, input_url):
        for refused in (
            _get(url),
            _signed_get(url, stranger),
            _get(url, **{CAPABILITY_HEADER: "made-up"}),
        ):
            assert refused.status_code == 403, refused.text
            assert refused.json()["check"] == "access"
        assert _signed_get(url, owner).status_code == 200
    # Not through the hub's blobs either, by the digest the log shows.
    assert _get(f"{net.url}/v1/blobs/{digest.to_text()}").status_code == 404
    # A stranger's client is refused the same way.
    with Client(net.url, log_vkey=net.log_vkey) as nosy, pytest.raises(VerificationError):
        nosy.inference(answer.id)


def test_an_unsigned_requester_reads_its_request_with_the_capability_it_was_given(
    net: LocalNetwork,
) -> None:
    name = _input_name(net)
    body = {"model": "mlp", "inputs": {name: tensor_to_json(SECRET)}}
    posted = httpx.post(net.url + "/v1/inferences", json=body, timeout=60)
    assert posted.status_code == 200, posted.text
    token = posted.headers[CAPABILITY_HEADER]
    url = f"{net.url}/v1/inferences/{posted.json()['id']}"
    assert _get(url).status_code == 403
    assert _get(url, **{CAPABILITY_HEADER: token}).json()["id"] == posted.json()["id"]
    # The capability is for that request only.
    with Client(net.url, log_vkey=net.log_vkey, key=generate_key()) as client:
        other = client.infer("mlp", {name: SECRET})
    elsewhere = f"{net.url}/v1/inferences/{other.id}"
    assert _get(elsewhere, **{CAPABILITY_HEADER: token}).status_code == 403


def test_a_stranger_cannot_collect_a_stored_answer_by_repeating_its_key(
    net: LocalNetwork,
) -> None:
    owner, stranger = generate_key(), generate_key()
    name = _input_name(net)
    data = json.dumps({"model": "mlp", "inputs": {name: tensor_to_json(SECRET)}}).encode()
    url = net.url + "/v1/inferences"
    extra = {"Content-Type": "application/json", "Idempotency-Key": "privacy-key-1"}
    first = httpx.post(url, content=data, headers=sign_request(owner, "POST", url, data, extra))
    assert first.status_code == 200, first.text
    for headers in (extra, sign_request(stranger, "POST", url, data, extra)):
        again = httpx.post(url, content=data, headers=headers, timeout=60)
        assert again.status_code == 409, again.text
        assert "outputs" not in again.text


def test_a_public_request_is_anyones_to_read_and_to_watch(net: LocalNetwork) -> None:
    name = _input_name(net)
    with Client(net.url, log_vkey=net.log_vkey, key=generate_key()) as client:
        answer = client.infer("mlp", {name: SECRET}, public=True)
    assert answer.request["visibility"] == "public"
    url = f"{net.url}/v1/inferences/{answer.id}"
    assert _get(url).status_code == 200
    digest = tensor_digest(SECRET).to_text()
    assert _get(f"{url}/tensors/{digest}").status_code == 200


def test_the_log_keeps_digests_not_inputs(net: LocalNetwork) -> None:
    name = _input_name(net)
    with Client(net.url, log_vkey=net.log_vkey) as client:
        client.infer("mlp", {name: SECRET})
    haystack = []
    for raw in logged_entries(net.url, net.log_vkey):
        haystack.append(raw)
        entry = json.loads(raw)
        # Receipts are DSSE envelopes: what they sign is base64 inside them.
        for receipt in entry.get("receipts") or []:
            haystack.append(base64.b64decode(receipt["payload"]))
    logged = b"\n".join(haystack)
    assert tensor_digest(SECRET).hex.encode() in logged  # the request is there, by digest
    for value in ("4242.125", "1717.0625", "9191.5", "3131.25"):
        assert value.encode() not in logged
