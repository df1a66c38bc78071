"""POST /v1/jobs: only jobs signed by the node's coordinator, for this node, once, in time,
with the inputs they signed; the answer is a receipt that verifies under the node key."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from _node_harness import (
    HubStandIn,
    SignedModel,
    inputs_for,
    job_body,
    node_config,
    running_node,
    wait_until,
)

from veriml.core.keys import SigningKey, VerifyingKey, generate_key
from veriml.core.tensors import tensor_digest
from veriml.runtime import RunResult, runner_for
from veriml.verify import verify_receipt


@pytest.fixture
def node(tmp_path: Path, hub_url: str, coordinator_pub: Path) -> Iterator[tuple[str, str]]:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, max_body_bytes=256 * 1024)
    with running_node(config) as url:
        yield url, httpx.get(f"{url}/v1/info").json()["node_id"]


def _post(url: str, body: object) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=body, timeout=60)


def test_job_answer_verifies_under_the_node_key_and_binds_policy_and_request_id(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    inputs = inputs_for(1)
    body = job_body(
        coordinator_key, node_id, signed_model.digest, inputs, policy="quorum:3/2", request_id="r-1"
    )
    response = _post(url, body)
    assert response.status_code == 200, response.text
    node_key = VerifyingKey.from_pem(httpx.get(f"{url}/v1/info").json()["public_key"].encode())
    result = RunResult.from_json(response.json())
    verified = verify_receipt(result, node_key=node_key, inputs=inputs)
    assert verified.predicate.policy == "quorum:3/2"
    assert verified.predicate.request_id == "r-1"
    assert verified.predicate.model_digest == signed_model.digest
    assert verified.predicate.node_id == node_id
    expected = runner_for(signed_model.folder).outputs(inputs)
    assert {n: tensor_digest(a) for n, a in result.outputs.items()} == {
        n: tensor_digest(a) for n, a in expected.items()
    }
    assert "inputs" not in response.json()


def test_a_job_signed_by_another_key_is_forbidden(
    node: tuple[str, str], signed_model: SignedModel
) -> None:
    url, node_id = node
    response = _post(url, job_body(generate_key(), node_id, signed_model.digest, inputs_for()))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["check"] == "job-signature"


def test_a_job_for_another_node_is_forbidden(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, _ = node
    other = generate_key().key_id
    response = _post(url, job_body(coordinator_key, other, signed_model.digest, inputs_for()))
    assert response.status_code == 403
    assert response.json()["check"] == "job-node"


def test_an_expired_job_is_gone(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    body = job_body(
        coordinator_key,
        node_id,
        signed_model.digest,
        inputs_for(),
        issued=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1),
        lifetime=dt.timedelta(milliseconds=500),
    )
    response = _post(url, body)
    assert response.status_code == 410
    assert response.json()["check"] == "job-expired"


def test_a_replayed_job_is_refused_and_runs_once(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    body = job_body(coordinator_key, node_id, signed_model.digest, inputs_for())
    assert _post(url, body).status_code == 200
    replay = _post(url, body)
    assert replay.status_code == 409
    assert "replay" in replay.json()["detail"]
    assert httpx.get(f"{url}/healthz").json()["completed"] == 1


def test_a_job_issued_before_the_node_started_is_refused(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    started = dt.datetime.fromisoformat(httpx.get(f"{url}/healthz").json()["started_at"][:-1])
    body = job_body(
        coordinator_key,
        node_id,
        signed_model.digest,
        inputs_for(),
        issued=started.replace(tzinfo=dt.UTC) - dt.timedelta(seconds=2),
    )
    assert _post(url, body).status_code == 409


def test_a_job_valid_for_longer_than_the_node_accepts_is_forbidden(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    body = job_body(
        coordinator_key,
        node_id,
        signed_model.digest,
        inputs_for(),
        lifetime=dt.timedelta(hours=1),
    )
    response = _post(url, body)
    assert response.status_code == 403
    assert response.json()["check"] == "job-validity"


def test_inputs_that_are_not_the_signed_ones_are_unprocessable(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    signed = {"x": tensor_digest(inputs_for(1)["x"])}
    body = job_body(
        coordinator_key, node_id, signed_model.digest, inputs_for(2), signed_digests=signed
    )
    response = _post(url, body)
    assert response.status_code == 422
    assert response.json()["check"] == "job-inputs"


def test_malformed_tensors_are_unprocessable(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    body = job_body(coordinator_key, node_id, signed_model.digest, inputs_for())
    body["inputs"]["x"] = {"dtype": "float32", "shape": [2, 4], "data": [1.0]}
    assert _post(url, body).status_code == 422


def test_a_body_over_the_limit_is_refused_before_it_is_read(node: tuple[str, str]) -> None:
    url, _ = node
    response = httpx.post(
        f"{url}/v1/jobs",
        content=b"{" + b" " * (300 * 1024) + b"}",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "body",
    [[], {"job": "x"}, {"job": {}, "inputs": []}, {"job": {}, "extra": 1}],
    ids=["list", "job-not-envelope", "inputs-not-object", "unknown-member"],
)
def test_malformed_job_bodies_are_bad_requests(node: tuple[str, str], body: object) -> None:
    url, _ = node
    assert _post(url, body).status_code == 400


def test_non_json_body_is_a_bad_request(node: tuple[str, str]) -> None:
    url, _ = node
    response = httpx.post(f"{url}/v1/jobs", content=b"\xff not json")
    assert response.status_code == 400
    assert response.json()["status"] == 400


def test_a_job_for_a_model_the_hub_does_not_have_is_not_found(
    node: tuple[str, str], coordinator_key: SigningKey
) -> None:
    url, node_id = node
    missing = tensor_digest(np.zeros(1, dtype=np.float32))
    response = _post(url, job_body(coordinator_key, node_id, missing, inputs_for()))
    assert response.status_code == 404


def test_info_names_the_node_key_and_its_accepted_descriptor(
    node: tuple[str, str], hub: HubStandIn
) -> None:
    url, node_id = node
    wait_until(lambda: httpx.get(f"{url}/healthz").json()["registered"], what="registration")
    info = httpx.get(f"{url}/v1/info").json()
    assert VerifyingKey.from_pem(info["public_key"].encode()).key_id == node_id
    assert info["operator"] == hub.registrations[0].operator  # the operator's account id
    assert hub.registrations, "the node registered at start-up"
    assert info["descriptor"]["payloadType"] == "application/vnd.veriml.node-descriptor+json"
