"""Model pulls: a node runs only a model whose every byte matches the hub's digests and whose
OMS signature verifies with the recorded publisher key; it pulls each model once and keeps it
across restarts, re-validated."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _node_harness import (
    HubStandIn,
    SignedModel,
    inputs_for,
    job_body,
    make_signed_model,
    node_config,
    running_node,
    wait_until,
)

from _servers import serve
from veriml.core.digest import Digest
from veriml.core.keys import SigningKey, generate_key
from veriml.node._models import ModelCache


def _node_id(url: str) -> str:
    return str(httpx.get(f"{url}/v1/info").json()["node_id"])


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_a_tampered_blob_is_refused_and_never_cached(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    onnx_digest = next(
        f["digest"]
        for f in hub.models[signed_model.digest.to_text()]["files"]
        if f["path"] == "model.onnx"
    )
    original = hub.blobs[onnx_digest]
    hub.blobs[onnx_digest] = original[:-1] + bytes([original[-1] ^ 1])
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
        assert response.status_code == 502
        assert response.json()["check"] == "blob-digest"
        assert httpx.get(f"{url}/healthz").json()["cached"] == []
    assert _leftovers(config.cache_dir) == []


def test_a_model_whose_signature_does_not_verify_is_refused(
    tmp_path: Path, coordinator_key: SigningKey, coordinator_pub: Path, signed_model: SignedModel
) -> None:
    hub = HubStandIn(coordinator_key)
    impostor = generate_key("ec").public.to_pem().decode()
    hub.publish(signed_model, publisher_pem=impostor)
    with serve(hub.app()) as hub_url:
        config = node_config(tmp_path / "node", hub_url, coordinator_pub)
        with running_node(config) as url:
            body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
            response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 502
    assert response.json()["check"] in {"public-key", "signature"}
    assert _leftovers(config.cache_dir) == []


def test_a_model_with_a_file_the_signature_does_not_cover_is_refused(
    tmp_path: Path, coordinator_key: SigningKey, coordinator_pub: Path
) -> None:
    model = make_signed_model(tmp_path / "m", seed=3, name="extra")
    hub = HubStandIn(coordinator_key)
    hub.publish(model)
    record = hub.models[model.digest.to_text()]
    extra = b"not signed"
    hub.blobs[Digest.of(extra).to_text()] = extra
    record["files"].append({"path": "notes.txt", "digest": Digest.of(extra).to_text(), "size": 10})
    with serve(hub.app()) as hub_url:
        config = node_config(tmp_path / "node", hub_url, coordinator_pub)
        with running_node(config) as url:
            body = job_body(coordinator_key, _node_id(url), model.digest, inputs_for())
            response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 502
    assert response.json()["check"] == "files"
    assert _leftovers(config.cache_dir) == []


@pytest.mark.parametrize("path", ["../evil.onnx", "/etc/evil", "a/../../b", "a\\b", "model.sig"])
def test_a_manifest_path_outside_the_folder_is_refused(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
    path: str,
) -> None:
    hub.models[signed_model.digest.to_text()]["files"][0]["path"] = path
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 502
    assert not (tmp_path / "evil.onnx").exists()
    assert _leftovers(config.cache_dir) == []


def test_concurrent_jobs_for_one_model_pull_it_once(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.blob_gate = threading.Event()
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, concurrency=2)
    with running_node(config) as url, ThreadPoolExecutor(4) as pool:
        node_id = _node_id(url)
        bodies = [
            job_body(coordinator_key, node_id, signed_model.digest, inputs_for(i)) for i in range(4)
        ]
        futures = [pool.submit(httpx.post, f"{url}/v1/jobs", json=b, timeout=60) for b in bodies]
        wait_until(
            lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 4, what="4 waiting"
        )
        hub.blob_gate.set()
        assert [f.result().status_code for f in futures] == [200] * 4
        assert hub.model_requests == 1
        assert httpx.get(f"{url}/healthz").json()["loaded"] == [signed_model.digest.to_text()]


def test_the_cache_survives_a_restart_without_pulling_again(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    for _ in range(2):
        with running_node(config) as url:
            body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
            assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200
    assert hub.model_requests == 1
    assert _leftovers(config.cache_dir) == [signed_model.digest.hex]


def test_a_cached_model_changed_on_disk_is_pulled_again(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200
    card = config.cache_dir / signed_model.digest.hex / "README.md"
    card.write_text(card.read_text() + "\nedited\n")
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200
    assert hub.model_requests == 2
    assert "edited" not in card.read_text()


def test_a_full_queue_answers_503_with_retry_after(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.blob_gate = threading.Event()
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, concurrency=1, queue_length=1)
    with running_node(config) as url, ThreadPoolExecutor(2) as pool:
        node_id = _node_id(url)
        first = [
            pool.submit(
                httpx.post,
                f"{url}/v1/jobs",
                json=job_body(coordinator_key, node_id, signed_model.digest, inputs_for(i)),
                timeout=60,
            )
            for i in range(2)
        ]
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 2)
        body = job_body(coordinator_key, node_id, signed_model.digest, inputs_for(9))
        refused = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        hub.blob_gate.set()
        assert [f.result().status_code for f in first] == [200, 200]
        # The refused job was not consumed: it runs once there is room.
        assert httpx.post(f"{url}/v1/jobs", json=body, timeout=60).status_code == 200


def test_pulls_run_off_the_event_loop(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.blob_gate = threading.Event()
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url, ThreadPoolExecutor(1) as pool:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        pending = pool.submit(httpx.post, f"{url}/v1/jobs", json=body, timeout=60)
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 1)
        # While the pull waits on the hub, the node still answers.
        assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        hub.blob_gate.set()
        assert pending.result().status_code == 200


def test_a_hub_that_lost_a_blob_makes_the_job_fail_retryably_and_caches_nothing(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    lost = hub.models[signed_model.digest.to_text()]["files"][0]["digest"]
    del hub.blobs[lost]
    config = node_config(tmp_path / "node", hub_url, coordinator_pub)
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 503
    problem = response.json()
    assert problem["status"] == 503
    assert problem["hub_status"] == 404
    assert _leftovers(config.cache_dir) == []


def test_a_model_larger_than_the_node_accepts_is_not_downloaded(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.models[signed_model.digest.to_text()]["files"][0]["size"] = 4096
    hub.blob_gate = threading.Event()  # never set: a download would hang until the timeout
    config = node_config(
        tmp_path / "node", hub_url, coordinator_pub, max_model_bytes=4096, job_timeout=10
    )
    with running_node(config) as url:
        body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
        response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    hub.blob_gate.set()
    assert response.status_code == 503
    assert response.json()["limit"] == 4096
    assert _leftovers(config.cache_dir) == []


def test_a_job_that_outlives_its_timeout_answers_504_and_frees_its_place(
    tmp_path: Path,
    hub: HubStandIn,
    hub_url: str,
    coordinator_key: SigningKey,
    coordinator_pub: Path,
    signed_model: SignedModel,
) -> None:
    hub.blob_gate = threading.Event()
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, job_timeout=1)
    try:
        with running_node(config) as url:
            body = job_body(coordinator_key, _node_id(url), signed_model.digest, inputs_for())
            response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
            assert response.status_code == 504
            assert response.json()["timeout_seconds"] == 1
            assert httpx.get(f"{url}/healthz").json()["load"]["queued"] == 0
    finally:
        hub.blob_gate.set()


def test_models_pushed_out_of_memory_reload_from_disk_without_a_pull(
    tmp_path: Path, coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    other = make_signed_model(tmp_path / "m2", seed=7, name="other")
    hub = HubStandIn(coordinator_key)
    hub.publish(signed_model)
    hub.publish(other)
    with serve(hub.app()) as hub_url:
        cache = ModelCache(tmp_path / "models", hub_url, max_bytes=1 << 30, max_loaded=1)

        async def use(*digests: Digest) -> list[Digest]:
            return [(await cache.runner(d)).digest for d in digests]

        order = (signed_model.digest, other.digest, signed_model.digest)
        assert asyncio.run(use(*order)) == list(order)
    assert cache.loaded == [signed_model.digest.to_text()]
    assert cache.pulls == 2
    assert hub.model_requests == 2
    assert sorted(cache.cached()) == sorted(
        d.to_text() for d in (signed_model.digest, other.digest)
    )
