"""The hub over HTTP: publishing verifies before it registers, hostile archives are refused
with nothing written, each model is logged once, blobs download with ranges."""

from __future__ import annotations

import base64
import os
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from _coordinator import (
    SignedModel,
    copy_model,
    make_signed_model,
    publisher_headers,
    running_coordinator,
    tar_members,
)
from veriml.coordinator import db
from veriml.core.digest import Digest
from veriml.core.keys import generate_key
from veriml.ledger.entries import ModelEntry, parse_entry


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("models"), name="mlp", version="1.0.0")


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'coordinator.db'}"


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, object]]:
    with running_coordinator(tmp_path / "home") as running:
        yield running


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["type"]
    return dict(body)


def _log_size(url: str) -> int:
    return int(httpx.get(url + "/log/checkpoint").text.splitlines()[1])


def _staging_is_empty(home: Path) -> bool:
    uploads = home / "coordinator" / "blobs" / "uploads"
    return not uploads.exists() or not any(uploads.iterdir())


def test_publish_verifies_registers_and_logs_the_model_once(
    tmp_path: Path, model: SignedModel, db_url: str
) -> None:
    with running_coordinator(tmp_path / "home", db_url=db_url) as (url, _):
        first = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers)
        assert first.status_code == 201, first.text
        record = first.json()
        again = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers)
        assert again.status_code == 200
        assert again.json()["digest"] == record["digest"]
        assert again.json()["log_index"] == record["log_index"]
        assert _log_size(url) == 1
        for ref in (record["digest"], "mlp", "mlp@1.0.0"):
            got = httpx.get(f"{url}/v1/models/{ref}")
            assert got.status_code == 200
            assert got.json()["digest"] == record["digest"]
        # The log entry is the registration, byte for byte, with the publisher's key.
        bundle = httpx.get(url + "/log/tile/entries/000.p/1").content
        entry = parse_entry(bundle[2:])
        assert isinstance(entry, ModelEntry)
        assert entry.digest == Digest.from_text(record["digest"])
        assert entry.publisher_key_id == model.key.public.key_id
        assert {f["path"] for f in record["files"]} == {"model.onnx", "README.md"}
        for f in record["files"]:
            blob = httpx.get(f"{url}/v1/blobs/{f['digest']}")
            assert Digest.of(blob.content).to_text() == f["digest"] == blob.headers["etag"][1:-1]
        assert httpx.get(f"{url}/v1/blobs/{record['signature']}").status_code == 200
    assert _staging_is_empty(tmp_path / "home")


def test_name_version_bound_to_another_digest_is_409(
    tmp_path: Path, model: SignedModel, db_url: str
) -> None:
    other = make_signed_model(tmp_path, name="mlp", version="1.0.0", seed=7)
    with running_coordinator(tmp_path / "home", db_url=db_url) as (url, _):
        assert httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers)
        clash = httpx.post(url + "/v1/models", content=other.tar(), headers=other.headers)
        body = _problem(clash, 409)
        assert body["model"] == "mlp@1.0.0"
        assert _log_size(url) == 1
        assert httpx.get(url + "/v1/models/mlp").json()["digest"] != body["digest"]


def test_archive_with_a_top_level_folder_or_gzip_is_accepted(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    gz = model.tar(arcname="mlp", mode="w:gz")
    assert httpx.post(url + "/v1/models", content=gz, headers=model.headers).status_code == 201


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil", tarfile.REGTYPE),
        ("/etc/evil", tarfile.REGTYPE),
        ("a/../../evil", tarfile.REGTYPE),
        ("link", tarfile.SYMTYPE),
        ("hard", tarfile.LNKTYPE),
        ("dev", tarfile.CHRTYPE),
        ("fifo", tarfile.FIFOTYPE),
    ],
)
def test_unsafe_archive_member_is_refused_by_name(
    tmp_path: Path, hub: tuple[str, object], model: SignedModel, name: str, kind: bytes
) -> None:
    url, _ = hub
    info = tarfile.TarInfo(name)
    info.type = kind
    data = b"x" if kind == tarfile.REGTYPE else None
    info.size = 1 if data else 0
    if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
        info.linkname = "/etc/passwd"
    onnx = tarfile.TarInfo("model.onnx")
    blob = (model.folder / "model.onnx").read_bytes()
    onnx.size = len(blob)
    body = tar_members((onnx, blob), (info, data))
    problem = _problem(httpx.post(url + "/v1/models", content=body, headers=model.headers), 400)
    assert problem["member"] == name
    assert httpx.get(url + "/v1/models").json()["models"] == []
    assert _log_size(url) == 0
    assert not (tmp_path.parent / "evil").exists()
    assert not Path("/etc/evil").exists()
    assert _staging_is_empty(tmp_path / "home")


def test_truncated_archive_is_400_and_registers_nothing(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    blob = (model.folder / "model.onnx").read_bytes()
    onnx = tarfile.TarInfo("model.onnx")
    onnx.size = len(blob)
    body = tar_members((onnx, blob))
    cut = body[: 512 + len(blob) // 2]  # the stream ends inside the member's data
    problem = _problem(httpx.post(url + "/v1/models", content=cut, headers=model.headers), 400)
    assert "tar" in str(problem["detail"])
    assert _log_size(url) == 0


def test_oversize_upload_is_413_before_and_while_streaming(
    tmp_path: Path, model: SignedModel
) -> None:
    limit = 4096
    body = model.tar()
    assert len(body) > limit
    with running_coordinator(tmp_path / "home", max_upload_bytes=limit) as (url, _):
        declared = httpx.post(url + "/v1/models", content=body, headers=model.headers)
        _problem(declared, 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for i in range(0, len(body), 1024):
                yield body[i : i + 1024]

        streamed = httpx.post(url + "/v1/models", content=chunks(), headers=model.headers)
        assert _problem(streamed, 413)["limit"] == limit
        assert _log_size(url) == 0
    assert _staging_is_empty(tmp_path / "home")


def test_too_many_files_or_too_deep_is_413(tmp_path: Path, model: SignedModel) -> None:
    many = [(tarfile.TarInfo(f"f{i}"), b"") for i in range(5)]
    deep = tarfile.TarInfo("/".join("d" * 1 for _ in range(6)) + "/f")
    with running_coordinator(tmp_path / "home", max_files=3, max_path_depth=4) as (url, _):
        _problem(
            httpx.post(url + "/v1/models", content=tar_members(*many), headers=model.headers), 413
        )
        _problem(
            httpx.post(url + "/v1/models", content=tar_members((deep, b"")), headers=model.headers),
            413,
        )


def test_publisher_key_missing_malformed_or_not_ec_is_400(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    body = model.tar()
    _problem(httpx.post(url + "/v1/models", content=body), 400)
    bad = {"X-Veriml-Publisher-Key": "not base64!"}
    _problem(httpx.post(url + "/v1/models", content=body, headers=bad), 400)
    ed = publisher_headers(generate_key("ed25519"))
    _problem(httpx.post(url + "/v1/models", content=body, headers=ed), 400)
    assert _log_size(url) == 0


def test_signature_by_another_publisher_is_403_naming_the_check(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    stranger = publisher_headers(generate_key("ec"))
    problem = _problem(httpx.post(url + "/v1/models", content=model.tar(), headers=stranger), 403)
    assert problem["check"] == "public-key"
    assert _log_size(url) == 0


def test_file_tampered_after_signing_is_403_naming_the_file(
    tmp_path: Path, hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    tampered = copy_model(model, tmp_path / "tampered")
    card = tampered.folder / "README.md"
    card.write_text(card.read_text() + "\nA sentence added after signing.\n")
    problem = _problem(
        httpx.post(url + "/v1/models", content=tampered.tar(), headers=model.headers), 403
    )
    assert problem["check"] == "file-digest"
    assert "README.md" in str(problem["detail"])
    assert _log_size(url) == 0


def test_unsigned_model_is_403(tmp_path: Path, hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    unsigned = copy_model(model, tmp_path / "unsigned")
    (unsigned.folder / "model.sig").unlink()
    problem = _problem(
        httpx.post(url + "/v1/models", content=unsigned.tar(), headers=model.headers), 403
    )
    assert problem["check"] == "signature-file"


def test_invalid_model_is_400(tmp_path: Path, hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    info = tarfile.TarInfo("model.onnx")
    info.size = 4
    problem = _problem(
        httpx.post(url + "/v1/models", content=tar_members((info, b"junk")), headers=model.headers),
        400,
    )
    assert problem["error"] == "InvalidModel"


def test_blob_ranges_follow_rfc_9110(hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    record = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers).json()
    onnx = next(f for f in record["files"] if f["path"] == "model.onnx")
    whole = (model.folder / "model.onnx").read_bytes()
    blob = f"{url}/v1/blobs/{onnx['digest']}"
    full = httpx.get(blob)
    assert full.status_code == 200
    assert full.content == whole
    assert full.headers["accept-ranges"] == "bytes"
    assert "immutable" in full.headers["cache-control"]
    for header, want in [
        ("bytes=0-9", whole[:10]),
        ("bytes=10-", whole[10:]),
        ("bytes=-5", whole[-5:]),
        (f"bytes=5-{len(whole) + 100}", whole[5:]),
    ]:
        part = httpx.get(blob, headers={"Range": header})
        assert part.status_code == 206, header
        assert part.content == want, header
        start = (
            len(whole) - len(want)
            if header.startswith("bytes=-")
            else int(header[6:].split("-")[0])
        )
        assert (
            part.headers["content-range"] == f"bytes {start}-{start + len(want) - 1}/{len(whole)}"
        )
    beyond = httpx.get(blob, headers={"Range": f"bytes={len(whole)}-"})
    assert _problem(beyond, 416)
    assert beyond.headers["content-range"] == f"bytes */{len(whole)}"
    several = httpx.get(blob, headers={"Range": "bytes=0-1,4-5"})
    assert several.status_code == 200
    assert several.content == whole
    cached = httpx.get(blob, headers={"If-None-Match": full.headers["etag"]})
    assert cached.status_code == 304
    _problem(httpx.get(f"{url}/v1/blobs/sha256:{'0' * 64}"), 404)
    _problem(httpx.get(f"{url}/v1/blobs/md5:abc"), 400)


def test_models_are_searchable_by_name_task_and_publisher(tmp_path: Path) -> None:
    a = make_signed_model(tmp_path, name="digits", version="1", task="classification")
    b = make_signed_model(tmp_path, name="digits", version="2", seed=1, key=a.key)
    c = make_signed_model(tmp_path, name="prices", version="1", seed=2, task="regression")
    with running_coordinator(tmp_path / "home") as (url, _):
        for m in (a, b, c):
            assert httpx.post(url + "/v1/models", content=m.tar(), headers=m.headers).is_success

        def names(**query: str) -> list[str]:
            found = httpx.get(url + "/v1/models", params=query).json()["models"]
            return [m["name"] + "@" + m["version"] for m in found]

        assert sorted(names()) == ["digits@1", "digits@2", "prices@1"]
        assert sorted(names(name="dig")) == ["digits@1", "digits@2"]
        assert names(task="regression") == ["prices@1"]
        assert sorted(names(publisher=a.key.public.key_id)) == ["digits@1", "digits@2"]
        page = httpx.get(url + "/v1/models", params={"limit": 2}).json()
        rest = httpx.get(url + "/v1/models", params={"limit": 2, "offset": page["next_offset"]})
        assert len(page["models"]) == 2
        assert len(rest.json()["models"]) == 1
        assert rest.json()["next_offset"] is None
        # name alone is the latest registered version
        assert httpx.get(url + "/v1/models/digits").json()["version"] == "2"
        _problem(httpx.get(url + "/v1/models/digits@3"), 404)


def test_lineage_resolves_known_parents(tmp_path: Path) -> None:
    parent = make_signed_model(tmp_path, name="base", version="1")
    with running_coordinator(tmp_path / "home") as (url, _):
        registered = httpx.post(
            url + "/v1/models", content=parent.tar(), headers=parent.headers
        ).json()
        unknown = "sha256:" + "ab" * 32
        child = make_signed_model(
            tmp_path, name="tuned", version="1", seed=3, parents=(registered["digest"], unknown)
        )
        made = httpx.post(url + "/v1/models", content=child.tar(), headers=child.headers).json()
        lineage = httpx.get(f"{url}/v1/models/{made['digest']}").json()["lineage"]
        assert lineage[0]["name"] == "base"
        assert lineage[0]["log_index"] == registered["log_index"]
        assert lineage[1] == {
            "ref": unknown,
            "digest": None,
            "name": None,
            "version": None,
            "log_index": None,
        }


def test_publisher_key_header_is_what_the_log_records(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    record = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers).json()
    pem = base64.b64decode(model.headers["X-Veriml-Publisher-Key"]).decode()
    assert record["publisher"] == {"key_id": model.key.public.key_id, "public_key": pem}


def test_registration_interrupted_after_its_log_append_is_finished_without_a_second_entry(
    tmp_path: Path, model: SignedModel, db_url: str
) -> None:
    with running_coordinator(tmp_path / "home", db_url=db_url) as (url, app):
        first = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers).json()
        # What a replica killed between the log append and the row's completion leaves.
        with app.state.engine.begin() as conn:
            conn.execute(sa.update(db.models).values(log_index=None, claimed_at=time.time() - 3600))
        assert httpx.get(url + "/v1/models").json()["models"] == []  # pending rows are hidden
        retry = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers)
        assert retry.status_code == 201
        assert retry.json()["log_index"] == first["log_index"]
        assert _log_size(url) == 1


def test_concurrent_publishes_of_one_model_log_it_once(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    body = model.tar()
    with ThreadPoolExecutor(4) as pool:
        answers = list(
            pool.map(
                lambda _: httpx.post(url + "/v1/models", content=body, headers=model.headers),
                range(4),
            )
        )
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["log_index"] for a in answers}) == 1
    assert _log_size(url) == 1


def test_staging_folders_left_by_a_crash_are_swept_at_start(tmp_path: Path) -> None:
    uploads = tmp_path / "home" / "coordinator" / "blobs" / "uploads"
    stale, fresh = uploads / "stale", uploads / "fresh"
    for folder in (stale, fresh):
        (folder / "upload").mkdir(parents=True)
    old = time.time() - 7 * 3600
    os.utime(stale, (old, old))
    with running_coordinator(tmp_path / "home"):
        assert not stale.exists()
        assert fresh.exists()  # possibly another replica's upload in progress
