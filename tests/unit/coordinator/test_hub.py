"""The hub over HTTP: publishing verifies before it registers, hostile archives are refused
with nothing written, each model is logged once, blobs download with ranges; names are owned
(the first publisher key of a namespace claims it in the log) and unsigned models, where the
operator allows them, own no name."""

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
from fastapi import FastAPI

from _coordinator import (
    SignedModel,
    copy_model,
    make_signed_model,
    publisher_headers,
    running_coordinator,
    tar_members,
)
from veriml.coordinator.auth import sign_request
from veriml.coordinator.db import tables as db
from veriml.core.digest import Digest
from veriml.core.keys import generate_key
from veriml.ledger.entries import ModelEntry, NamespaceEntry, parse_entry
from veriml.verify import check_provenance


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


def _entries(app: FastAPI, start: int, end: int) -> list[object]:
    return [parse_entry(e) for e in app.state.coordinator.log.entries(start, end)]


def _staging_is_empty(home: Path) -> bool:
    uploads = home / "coordinator" / "blobs" / "uploads"
    return not uploads.exists() or not any(uploads.iterdir())


def test_publish_verifies_registers_and_logs_the_model_once(
    tmp_path: Path, model: SignedModel, db_url: str
) -> None:
    with running_coordinator(tmp_path / "home", db_url=db_url) as (url, app):
        start = _log_size(url)
        first = model.post(url)
        assert first.status_code == 201, first.text
        record = first.json()
        again = model.post(url)
        assert again.status_code == 200
        assert again.json()["digest"] == record["digest"]
        assert again.json()["log_index"] == record["log_index"]
        # One group: the claim of the name's namespace, then the model.
        assert _log_size(url) == start + 2
        assert record["log_index"] == start + 1
        for ref in (record["digest"], "mlp", "mlp@1.0.0"):
            got = httpx.get(f"{url}/v1/models/{ref}")
            assert got.status_code == 200
            assert got.json()["digest"] == record["digest"]
        # The log entry is the registration, byte for byte, with the publisher's key.
        (entry,) = _entries(app, start + 1, start + 2)
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
    other = make_signed_model(tmp_path, name="mlp", version="1.0.0", seed=7, key=model.key)
    with running_coordinator(tmp_path / "home", db_url=db_url) as (url, _):
        assert model.post(url).status_code == 201
        size = _log_size(url)
        body = _problem(other.post(url), 409)
        assert body["model"] == "mlp@1.0.0"
        assert _log_size(url) == size
        assert httpx.get(url + "/v1/models/mlp").json()["digest"] != body["digest"]


def test_archive_with_a_top_level_folder_or_gzip_is_accepted(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    gz = model.tar(arcname="mlp", mode="w:gz")
    assert model.post(url, gz).status_code == 201


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
    size = _log_size(url)
    problem = _problem(model.post(url, body), 400)
    assert problem["member"] == name
    assert httpx.get(url + "/v1/models").json()["models"] == []
    assert _log_size(url) == size
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
    size = _log_size(url)
    problem = _problem(model.post(url, cut), 400)
    assert "tar" in str(problem["detail"])
    assert _log_size(url) == size


def test_oversize_upload_is_413_before_and_while_streaming(
    tmp_path: Path, model: SignedModel
) -> None:
    limit = 4096
    body = model.tar()
    assert len(body) > limit
    with running_coordinator(tmp_path / "home", max_upload_bytes=limit) as (url, _):
        size = _log_size(url)
        _problem(model.post(url, body), 413)

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
            for i in range(0, len(body), 1024):
                yield body[i : i + 1024]

        headers = model.upload_headers(body, url)
        streamed = httpx.post(url + "/v1/models", content=chunks(), headers=headers)
        assert _problem(streamed, 413)["limit"] == limit
        assert _log_size(url) == size
    assert _staging_is_empty(tmp_path / "home")


def test_too_many_files_or_too_deep_is_413(tmp_path: Path, model: SignedModel) -> None:
    many = [(tarfile.TarInfo(f"f{i}"), b"") for i in range(5)]
    deep = tarfile.TarInfo("/".join("d" * 1 for _ in range(6)) + "/f")
    with running_coordinator(tmp_path / "home", max_files=3, max_path_depth=4) as (url, _):
        _problem(model.post(url, tar_members(*many)), 413)
        _problem(model.post(url, tar_members((deep, b""))), 413)


def test_publisher_key_malformed_or_not_ec_is_400_and_missing_is_403(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    body = model.tar()
    size = _log_size(url)
    missing = _problem(httpx.post(url + "/v1/models", content=body), 403)
    assert missing["check"] == "publisher-key"  # an unsigned upload, and this hub wants none
    bad = {"X-Veriml-Publisher-Key": "not base64!"}
    _problem(httpx.post(url + "/v1/models", content=body, headers=bad), 400)
    ed = generate_key("ed25519")
    signed_by_ed = sign_request(ed, "POST", url + "/v1/models", body, publisher_headers(ed))
    _problem(httpx.post(url + "/v1/models", content=body, headers=signed_by_ed), 400)
    assert _log_size(url) == size


def test_signature_by_another_publisher_is_403_naming_the_check(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    size = _log_size(url)
    stranger = SignedModel(model.folder, generate_key("ec"))
    problem = _problem(stranger.post(url), 403)
    assert problem["check"] == "public-key"
    assert _log_size(url) == size


def test_a_publication_must_be_signed_by_the_publisher_key(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    body = model.tar()
    size = _log_size(url)
    unsigned = _problem(httpx.post(url + "/v1/models", content=body, headers=model.headers), 403)
    assert unsigned["check"] == "request-signature"
    other = generate_key("ed25519")
    by_other = sign_request(other, "POST", url + "/v1/models", body, model.headers)
    problem = _problem(httpx.post(url + "/v1/models", content=body, headers=by_other), 403)
    assert problem["check"] == "request-signature"
    assert (problem["expected"], problem["got"]) == (model.key.key_id, other.key_id)
    assert _log_size(url) == size
    assert model.post(url).json()["submitted_by"] == model.key.key_id


def test_an_operator_may_accept_publications_signed_by_any_key_or_none(
    tmp_path: Path, model: SignedModel
) -> None:
    body = model.tar()
    client = generate_key("ed25519")
    with running_coordinator(tmp_path / "home", require_signed_publish=False) as (url, _):
        signed = sign_request(client, "POST", url + "/v1/models", body, model.headers)
        record = httpx.post(url + "/v1/models", content=body, headers=signed)
        assert record.status_code == 201, record.text
        assert record.json()["submitted_by"] == client.key_id
        again = httpx.post(url + "/v1/models", content=body, headers=model.headers)
        assert again.status_code == 200


def test_file_tampered_after_signing_is_403_naming_the_file(
    tmp_path: Path, hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    tampered = copy_model(model, tmp_path / "tampered")
    card = tampered.folder / "README.md"
    card.write_text(card.read_text() + "\nA sentence added after signing.\n")
    size = _log_size(url)
    problem = _problem(tampered.post(url), 403)
    assert problem["check"] == "file-digest"
    assert "README.md" in str(problem["detail"])
    assert _log_size(url) == size


def test_unsigned_model_is_403(tmp_path: Path, hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    unsigned = copy_model(model, tmp_path / "unsigned")
    (unsigned.folder / "model.sig").unlink()
    problem = _problem(unsigned.post(url), 403)
    assert problem["check"] == "signature-file"


def test_invalid_model_is_400(tmp_path: Path, hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    info = tarfile.TarInfo("model.onnx")
    info.size = 4
    problem = _problem(model.post(url, tar_members((info, b"junk"))), 400)
    assert problem["error"] == "InvalidModelError"


def test_blob_ranges_follow_rfc_9110(hub: tuple[str, object], model: SignedModel) -> None:
    url, _ = hub
    record = model.post(url).json()
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
            assert m.post(url).is_success

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
        registered = parent.post(url).json()
        unknown = "sha256:" + "ab" * 32
        child = make_signed_model(
            tmp_path, name="tuned", version="1", seed=3, parents=(registered["digest"], unknown)
        )
        made = child.post(url).json()
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
    record = model.post(url).json()
    pem = base64.b64decode(model.headers["X-Veriml-Publisher-Key"]).decode()
    assert record["publisher"] == {"key_id": model.key.public.key_id, "public_key": pem}
    assert record["unsigned"] is False


def test_registration_interrupted_after_its_log_append_is_finished_without_a_second_entry(
    tmp_path: Path, model: SignedModel, db_url: str
) -> None:
    home, blobs = tmp_path / "home", str(tmp_path / "blobs")
    with running_coordinator(home, db_url=db_url, blobs_url=blobs) as (url, app):
        first = model.post(url).json()
        size = _log_size(url)
        claimed = first["namespace"]["log_index"]
        # What a replica killed between the log append and the rows' completion leaves.
        with app.state.coordinator.engine.begin() as conn:
            conn.execute(sa.update(db.models).values(log_index=None, claimed_at=time.time() - 3600))
            conn.execute(sa.update(db.namespaces).values(log_index=None))
    with running_coordinator(home, db_url=db_url, blobs_url=blobs) as (url, app):
        assert httpx.get(url + "/v1/models").json()["models"] == []  # pending rows are hidden
        retry = model.post(url)
        assert retry.status_code == 201
        assert retry.json()["log_index"] == first["log_index"]
        assert retry.json()["namespace"]["log_index"] == claimed
        assert _log_size(url) == size


def test_concurrent_publishes_of_one_model_log_it_once(
    hub: tuple[str, object], model: SignedModel
) -> None:
    url, _ = hub
    body = model.tar()
    size = _log_size(url)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: model.post(url, body), range(4)))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 201]
    assert len({a.json()["log_index"] for a in answers}) == 1
    assert _log_size(url) == size + 2


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


# -- names ------------------------------------------------------------------------------------


def test_the_first_model_of_a_namespace_claims_it_in_one_group_with_its_entry(
    tmp_path: Path,
) -> None:
    iris = make_signed_model(tmp_path, name="acme/iris", version="1")
    with running_coordinator(tmp_path / "home") as (url, app):
        start = _log_size(url)
        record = iris.post(url).json()
        claim, entry = _entries(app, start, start + 2)
        assert isinstance(claim, NamespaceEntry)
        assert (claim.namespace, claim.owner, claim.model) == (
            "acme",
            iris.key.key_id,
            Digest.from_text(record["digest"]),
        )
        assert isinstance(entry, ModelEntry)
        assert record["log_index"] == start + 1
        assert record["namespace"] == {"name": "acme", "owner": iris.key.key_id, "log_index": start}
        # The evidence an answer cites, and what the SDK checks with it.
        digest = Digest.from_text(record["digest"])
        provenance = app.state.coordinator.hub.provenance(digest)
        assert (provenance.model, provenance.namespace) == (start + 1, start)
        logged = app.state.coordinator.log.entries
        proven = check_provenance(
            "acme/iris@1",
            digest,
            logged(provenance.model, provenance.model + 1)[0],
            logged(start, start + 1)[0],
        )
        assert proven.publisher == iris.key.key_id


def test_later_versions_of_the_owner_log_only_their_model_entry(tmp_path: Path) -> None:
    one = make_signed_model(tmp_path, name="acme/iris", version="1")
    two = make_signed_model(tmp_path, name="acme/iris", version="2", seed=1, key=one.key)
    lily = make_signed_model(tmp_path, name="acme/lily", version="1", seed=2, key=one.key)
    with running_coordinator(tmp_path / "home") as (url, app):
        first = one.post(url).json()
        size = _log_size(url)
        for model in (two, lily):
            record = model.post(url)
            assert record.status_code == 201, record.text
            assert record.json()["namespace"] == first["namespace"]
        assert _log_size(url) == size + 2
        assert all(isinstance(e, ModelEntry) for e in _entries(app, size, size + 2))
        assert httpx.get(url + "/v1/models/acme/iris").json()["version"] == "2"


def test_a_name_in_a_namespace_another_key_owns_is_403_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    owner = make_signed_model(tmp_path, name="acme/iris", version="1")
    squatter = make_signed_model(tmp_path, name="acme/iris", version="2", seed=5)
    with running_coordinator(tmp_path / "home") as (url, _):
        owner.post(url)
        size = _log_size(url)
        problem = _problem(squatter.post(url), 403)
        assert problem["check"] == "namespace"
        assert problem["namespace"] == "acme"
        assert problem["owner"] == owner.key.key_id
        assert problem["publisher"] == squatter.key.key_id
        assert _log_size(url) == size
        assert [m["version"] for m in httpx.get(url + "/v1/models").json()["models"]] == ["1"]
        onnx = Digest.of((squatter.folder / "model.onnx").read_bytes())
        assert httpx.get(f"{url}/v1/blobs/{onnx}").status_code == 404
        # A bare name is its own namespace: "acme" itself is taken too.
        bare = make_signed_model(tmp_path, name="acme", version="1", seed=6, key=squatter.key)
        assert _problem(bare.post(url), 403)["check"] == "namespace"


def test_publishers_racing_for_a_new_namespace_get_one_claim(tmp_path: Path) -> None:
    racers = [
        make_signed_model(tmp_path, name="acme/iris", version=str(i), seed=i) for i in range(4)
    ]
    with running_coordinator(tmp_path / "home") as (url, app):
        start = _log_size(url)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda m: m.post(url), racers))
        assert sorted(a.status_code for a in answers) == [201, 403, 403, 403]
        claims = [e for e in _entries(app, start, _log_size(url)) if isinstance(e, NamespaceEntry)]
        assert len(claims) == 1


def test_one_publisher_registering_models_of_a_new_namespace_at_once_claims_it_once(
    tmp_path: Path,
) -> None:
    key = generate_key("ec")
    models = [
        make_signed_model(tmp_path, name=f"acme/m{i}", version="1", seed=i, key=key)
        for i in range(4)
    ]
    with running_coordinator(tmp_path / "home") as (url, app):
        start = _log_size(url)
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda m: m.post(url), models))
        assert [a.status_code for a in answers] == [201] * 4
        entries = _entries(app, start, _log_size(url))
        assert [type(e).__name__ for e in entries].count("NamespaceEntry") == 1
        assert isinstance(entries[0], NamespaceEntry)  # the claim comes before every model


# -- unsigned models -----------------------------------------------------------------------------


def _unsigned(model: SignedModel, dest: Path) -> SignedModel:
    copy = copy_model(model, dest)
    (copy.folder / "model.sig").unlink()
    return copy


def test_an_unsigned_upload_is_refused_unless_the_operator_allows_it(
    hub: tuple[str, object], model: SignedModel, tmp_path: Path
) -> None:
    url, _ = hub
    body = _unsigned(model, tmp_path / "unsigned").tar()
    size = _log_size(url)
    problem = _problem(httpx.post(url + "/v1/models", content=body), 403)
    assert problem["check"] == "publisher-key"
    assert _log_size(url) == size
    assert httpx.get(url + "/v1/models").json()["models"] == []


def test_an_allowed_unsigned_model_is_marked_and_reachable_by_digest_only(
    tmp_path: Path, model: SignedModel
) -> None:
    unsigned = _unsigned(model, tmp_path / "unsigned")
    with running_coordinator(tmp_path / "home", allow_unsigned_publish=True) as (url, app):
        start = _log_size(url)
        created = httpx.post(url + "/v1/models", content=unsigned.tar())
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["unsigned"] is True
        assert (record["publisher"], record["signature"], record["namespace"]) == (None, None, None)
        # One model entry, unsigned, and no claim: it owns no name.
        (entry,) = _entries(app, start, _log_size(url))
        assert isinstance(entry, ModelEntry)
        assert entry.unsigned
        digest = record["digest"]
        assert httpx.get(f"{url}/v1/models/{digest}").json()["unsigned"] is True
        for ref in ("mlp", "mlp@1.0.0"):
            _problem(httpx.get(f"{url}/v1/models/{ref}"), 404)
        listed = httpx.get(url + "/v1/models").json()
        assert [m["unsigned"] for m in listed["models"]] == [True]
        assert listed["data"][0]["owned_by"] == "unsigned"
        assert listed["data"][0]["id"] == digest
        provenance = app.state.coordinator.hub.provenance(Digest.from_text(digest))
        assert (provenance.model, provenance.namespace) == (start, None)
        # A signed folder still needs its publisher's key to be published.
        _problem(httpx.post(url + "/v1/models", content=model.tar()), 400)


def test_an_unsigned_model_takes_neither_the_owners_name_nor_the_owners_model(
    tmp_path: Path, model: SignedModel
) -> None:
    other = make_signed_model(tmp_path, name="mlp", version="1.0.0", seed=9)
    with running_coordinator(tmp_path / "home", allow_unsigned_publish=True) as (url, _):
        # Someone uploads, unsigned, the owner's exact model and another under its name@version.
        for squat in (_unsigned(model, tmp_path / "a"), _unsigned(other, tmp_path / "b")):
            assert httpx.post(url + "/v1/models", content=squat.tar()).status_code == 201
        _problem(httpx.get(url + "/v1/models/mlp@1.0.0"), 404)
        published = model.post(url)
        assert published.status_code == 201, published.text
        record = published.json()
        assert record["unsigned"] is False
        assert record["publisher"]["key_id"] == model.key.key_id
        assert httpx.get(url + "/v1/models/mlp@1.0.0").json()["digest"] == record["digest"]
        assert httpx.get(f"{url}/v1/models/{record['digest']}").json()["unsigned"] is False
