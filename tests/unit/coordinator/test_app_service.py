"""Service plumbing: identity, health, metrics, OpenAPI operation ids, problem JSON for every
client error (FastAPI's own included), body limits, settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from _coordinator import make_signed_model, running_coordinator
from veriml.coordinator.app import create_app
from veriml.coordinator.settings import Settings
from veriml.core.errors import FormatError
from veriml.core.keys import load_private_key
from veriml.ledger.entries import BeaconEntry, StateEntry, parse_entry
from veriml.tlog.note import NoteVerifier, open_note

CONTRACT_OPERATIONS = {
    "get_info",
    "publish_model",
    "list_models",
    "get_model",
    "get_blob",
    "register_node",
    "node_heartbeat",
    "list_nodes",
    "healthz",
}


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, FastAPI]]:
    with running_coordinator(tmp_path / "home", max_json_bytes=1024) as running:
        yield running


def test_info_names_the_keys_on_disk_and_the_checkpoint_verifies_with_its_vkey(
    tmp_path: Path, coordinator: tuple[str, FastAPI]
) -> None:
    url, _ = coordinator
    info = httpx.get(url + "/v1/info").json()
    data = tmp_path / "home" / "coordinator"
    key = load_private_key(data / "coordinator.key")
    assert info["coordinator_key_id"] == key.key_id
    assert info["coordinator_key"] == key.public.to_pem().decode()
    assert json.loads((data / "log.key.json").read_text())["vkey"] == info["log_vkey"]
    note = open_note(
        httpx.get(url + "/log/checkpoint").content, [NoteVerifier.from_vkey(info["log_vkey"])]
    )
    assert note.text.startswith(info["log_origin"] + "\n")
    for name in ("coordinator.key", "log.key"):
        assert (data / name).stat().st_mode & 0o777 == 0o600


def test_healthz_reports_the_log(coordinator: tuple[str, FastAPI]) -> None:
    url, app = coordinator
    assert httpx.get(url + "/healthz").json() == {"status": "ok", "log_size": 2}
    # What a fresh coordinator logs before any request: the rules in force (a ``state`` entry
    # over the empty bond map), then epoch 0's beacon, committing to its key and revealing none.
    rules, beacon = (parse_entry(e) for e in app.state.coordinator.log.entries(0, 2))
    assert isinstance(rules, StateEntry)
    assert rules.size == 0
    assert rules.rules.admin == httpx.get(url + "/v1/info").json()["coordinator_key_id"]
    assert isinstance(beacon, BeaconEntry)
    assert (beacon.epoch, beacon.reveal) == (0, None)


def test_openapi_has_the_contract_operation_ids(coordinator: tuple[str, FastAPI]) -> None:
    url, _ = coordinator
    spec = httpx.get(url + "/openapi.json").json()
    ids = {op["operationId"] for path in spec["paths"].values() for op in path.values()}
    assert ids >= CONTRACT_OPERATIONS
    assert "log_add" not in ids  # the coordinator's log is read-only over HTTP


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/v1/models", None, 405),
        ("GET", "/v1/models?limit=0", None, 422),
        ("GET", "/v1/models/sha256:" + "0" * 64, None, 404),
        ("GET", "/v1/models/sha256:nothex", None, 400),
        ("GET", "/v1/blobs/nope", None, 400),
        ("POST", "/v1/nodes", b"not json", 400),
        ("POST", "/v1/nodes", b"[]", 400),
        ("POST", "/v1/nodes", b"{" + b" " * 4096 + b"}", 413),
        ("POST", "/log/add", b"{}", 404),
        ("GET", "/log/tile/0/x999", None, 400),
        ("GET", "/log/tile/0/000", None, 404),
    ],
)
def test_every_client_error_is_problem_json(
    coordinator: tuple[str, FastAPI], method: str, path: str, body: bytes | None, status: int
) -> None:
    url, _ = coordinator
    response = httpx.request(method, url + path, content=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://")
    assert problem["title"]
    assert problem["detail"]


def test_metrics_count_requests_by_operation_and_report_state(
    tmp_path: Path, coordinator: tuple[str, FastAPI]
) -> None:
    url, _ = coordinator
    model = make_signed_model(tmp_path)
    assert model.post(url).status_code == 201
    httpx.get(url + "/v1/models/mlp")
    httpx.get(url + "/no/such/route")
    response = httpx.get(url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'veriml_http_requests_total{method="POST",operation="publish_model",status="201"} 1.0'
        in text
    )
    assert 'veriml_http_requests_total{method="GET",operation="get_model",status="200"} 1.0' in text
    assert 'operation="unmatched",status="404"' in text
    assert 'veriml_http_request_duration_seconds_count{operation="publish_model"} 1.0' in text
    assert "veriml_models 1.0" in text
    assert "veriml_live_nodes 0.0" in text
    size = httpx.get(url + "/healthz").json()["log_size"]
    assert f"veriml_log_size {size:.1f}" in text


def test_settings_come_from_the_environment_and_refuse_placeholders(tmp_path: Path) -> None:
    env = {
        "VERIML_HOME": str(tmp_path),
        "VERIML_MAX_UPLOAD_BYTES": "1000",
        "VERIML_HEARTBEAT_INTERVAL": "2.5",
        "VERIML_REQUIRE_SIGNED_PUBLISH": "false",
        "VERIML_ALLOW_UNSIGNED_PUBLISH": "on",
    }
    settings = Settings.from_env(env, max_files=7)
    assert settings.home == tmp_path
    assert settings.max_upload_bytes == 1000
    assert settings.max_files == 7
    assert settings.live_after == 7.5
    assert settings.require_signed_publish is False
    assert settings.allow_unsigned_publish is True
    assert Settings().require_signed_publish is True  # safe defaults: signed, by the publisher
    assert Settings().allow_unsigned_publish is False
    assert settings.db_url == f"sqlite:///{tmp_path}/coordinator/veriml.db"
    assert settings.log_db_url == settings.db_url
    with pytest.raises(FormatError, match="placeholder"):
        Settings(key_passphrase="changethis")
    with pytest.raises(FormatError, match="positive"):
        Settings(max_upload_bytes=0)
    with pytest.raises(FormatError, match="VERIML_MAX_FILES"):
        Settings.from_env({"VERIML_MAX_FILES": "many"})


def test_an_encrypted_key_passphrase_protects_the_keys_on_disk(tmp_path: Path) -> None:
    with running_coordinator(tmp_path / "home", key_passphrase="a long passphrase") as (url, _):
        assert httpx.get(url + "/healthz").status_code == 200
    pem = (tmp_path / "home" / "coordinator" / "coordinator.key").read_bytes()
    assert b"ENCRYPTED" in pem


def test_create_app_opens_nothing_until_the_app_starts(tmp_path: Path) -> None:
    create_app(Settings(home=tmp_path / "home"))
    assert not (tmp_path / "home").exists()  # keys, database and blobs come with the lifespan
