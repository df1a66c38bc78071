"""The hub takes GGUF language models like ONNX ones (same OMS signature check, same blobs, one
log entry) and lists them in OpenAI's ``/v1/models`` shape beside its own."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import SignedModel, make_signed_model, running_coordinator, tar_folder
from _llm import gguf_bytes, make_smollm2_folder
from veriml.core.digest import Digest
from veriml.core.errors import InvalidModelError
from veriml.core.keys import generate_key
from veriml.ledger.entries import ModelEntry, parse_entry
from veriml.models import sign_model
from veriml.models.gguf import LLMPackage
from veriml.models.package import ModelPackage


def _sign(folder: Path, root: Path) -> SignedModel:
    key = generate_key("ec")
    key_path = root / f"{folder.name}.key"
    key.save(key_path)
    sign_model(folder, key_path)
    return SignedModel(folder, key)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    root = tmp_path_factory.mktemp("gguf")
    return _sign(make_smollm2_folder(root / "smollm2", name="smollm2", version="1.0.0"), root)


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory, smollm2: SignedModel
) -> Iterator[tuple[str, FastAPI, dict[str, Any]]]:
    """A coordinator with the SmolLM2 package published once over HTTP (and one ONNX model)."""
    root = tmp_path_factory.mktemp("hub")
    mlp = make_signed_model(root, name="mlp", version="1.0.0")
    with running_coordinator(root / "home") as (url, app):
        response = smollm2.post(url, timeout=120)
        assert response.status_code == 201, response.text
        onnx = mlp.post(url)
        assert onnx.status_code == 201, onnx.text
        yield url, app, response.json()


def test_a_gguf_package_registers_under_its_oms_digest(
    hub: tuple[str, FastAPI, dict[str, Any]], smollm2: SignedModel
) -> None:
    url, _, record = hub
    package = LLMPackage.load(smollm2.folder)
    assert record["digest"] == package.digest.to_text()
    assert record["files_digest"] == package.files_digest.to_text()
    assert record["name"] == "smollm2"
    assert record["version"] == "1.0.0"
    assert record["io"] == {
        "kind": "gguf",
        "architecture": "llama",
        "context_length": package.metadata.context_length,
        "vocab_size": package.metadata.vocab_size,
        "chat_template": True,
    }
    assert [f["path"] for f in record["files"]] == [e.path for e in package.manifest]
    assert "model.gguf" in {f["path"] for f in record["files"]}
    again = smollm2.post(url, timeout=120)
    assert again.status_code == 200  # the same digest is not registered (or logged) twice
    assert again.json()["log_index"] == record["log_index"]


def test_the_log_entry_of_a_gguf_model_names_its_digest(
    hub: tuple[str, FastAPI, dict[str, Any]],
) -> None:
    _, app, record = hub
    log = app.state.coordinator.hub.log
    (raw,) = log.storage.entries(record["log_index"], record["log_index"] + 1)
    entry = parse_entry(raw)
    assert isinstance(entry, ModelEntry)
    assert entry.digest.to_text() == record["digest"]
    assert (entry.name, entry.version) == ("smollm2", "1.0.0")


def test_the_model_list_answers_the_hub_and_the_openai_shapes(
    hub: tuple[str, FastAPI, dict[str, Any]],
) -> None:
    url, _, record = hub
    body = httpx.get(url + "/v1/models").json()
    assert body["object"] == "list"
    assert {m["name"] for m in body["models"]} == {"smollm2", "mlp"}
    assert body["next_offset"] is None
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"smollm2@1.0.0", "mlp@1.0.0"}
    smol = by_id["smollm2@1.0.0"]
    registered = dt.datetime.fromisoformat(record["registered_at"].replace("Z", "+00:00"))
    assert smol == {
        "id": "smollm2@1.0.0",
        "object": "model",
        "created": int(registered.timestamp()),
        "owned_by": record["publisher"]["key_id"],
    }
    paged = httpx.get(url + "/v1/models", params={"limit": 1}).json()
    assert len(paged["data"]) == len(paged["models"]) == 1
    assert paged["data"][0]["id"] == f"{paged['models'][0]['name']}@1.0.0"


def test_the_official_openai_client_lists_the_models(
    hub: tuple[str, FastAPI, dict[str, Any]],
) -> None:
    openai = pytest.importorskip("openai")
    url, _, _ = hub
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client:
        ids = {m.id for m in client.models.list()}
    assert ids == {"smollm2@1.0.0", "mlp@1.0.0"}


def test_the_gguf_weights_download_by_digest(hub: tuple[str, FastAPI, dict[str, Any]]) -> None:
    url, _, record = hub
    gguf = next(f for f in record["files"] if f["path"] == "model.gguf")
    head = httpx.get(url + f"/v1/blobs/{gguf['digest']}", headers={"Range": "bytes=0-3"})
    assert head.status_code == 206
    assert head.content == b"GGUF"
    assert head.headers["content-range"] == f"bytes 0-3/{gguf['size']}"


def test_the_service_checks_out_either_kind(
    hub: tuple[str, FastAPI, dict[str, Any]], smollm2: SignedModel
) -> None:
    url, app, record = hub
    service = app.state.coordinator.hub
    package = service.package(LLMPackage.load(smollm2.folder).digest)
    assert isinstance(package, LLMPackage)
    assert package.digest.to_text() == record["digest"]
    assert package.gguf_path.read_bytes()[:4] == b"GGUF"
    with pytest.raises(InvalidModelError):
        service.onnx_package(package.digest)
    mlp = Digest.from_text(httpx.get(url + "/v1/models/mlp@1.0.0").json()["digest"])
    assert isinstance(service.onnx_package(mlp), ModelPackage)
    assert isinstance(service.package(mlp), ModelPackage)


def test_a_corrupt_gguf_is_refused_with_nothing_registered(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    whole = gguf_bytes()
    (folder / "model.gguf").write_bytes(whole[: len(whole) // 2])  # tensor data cut off
    (folder / "README.md").write_text("---\nname: broken\nversion: 1.0.0\n---\n")
    model = _sign(folder, tmp_path)
    with running_coordinator(tmp_path / "home") as (url, _):
        response = model.post(url, tar_folder(folder))
        assert response.status_code == 400, response.text
        assert "GGUF" in response.json()["detail"]
        assert httpx.get(url + "/v1/models").json()["data"] == []


def test_an_onnx_inference_request_for_a_language_model_is_refused(
    hub: tuple[str, FastAPI, dict[str, Any]],
) -> None:
    url, _, _ = hub
    response = httpx.post(url + "/v1/inferences", json={"model": "smollm2", "inputs": {}})
    assert response.status_code == 422, response.text
    assert "/v1/chat/completions" in response.json()["detail"]
