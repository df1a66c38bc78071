"""Red team: a model name means its publisher's model (docs/threat-model.md §2).

Attacks, each of which must fail:

- a second publisher publishes under a namespace another key claimed (over HTTP, with the SDK
  a user would use): refused, nothing stored or logged, the name still reaches the owner's model;
- a coordinator writes such a model entry into its own log anyway: the ledger fold refuses the
  log, and so does ``veriml log audit``, which folds it;
- anyone uploads a model no publisher signed: refused unless the operator allows unsigned
  publishing, and then the model is marked in every listing and no name reaches it;
- a coordinator cites, for a name, a model entry of another publisher or another name, or a
  namespace claim by another key: ``check_provenance`` refuses each.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from _coordinator import SignedModel, copy_model, make_signed_model, running_coordinator
from veriml.cli.app import app as cli
from veriml.client import Client
from veriml.core.digest import Digest
from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.core.timestamps import utc_now
from veriml.ledger import fold
from veriml.ledger.entries import ModelEntry, NamespaceEntry, parse_entry
from veriml.ledger.state import LedgerError
from veriml.verify import check_provenance

Hub = tuple[str, FastAPI]


@pytest.fixture(scope="module")
def owner(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("owner"), name="acme/iris", version="1")


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    """Another key's model under the owner's namespace (a newer version, to win "latest")."""
    root = tmp_path_factory.mktemp("attacker")
    return make_signed_model(root, name="acme/iris", version="2", seed=13)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, owner: SignedModel) -> Iterator[Hub]:
    """A coordinator where the owner published ``acme/iris@1`` (and so claimed ``acme``)."""
    with running_coordinator(tmp_path_factory.mktemp("hub") / "home") as (url, app):
        assert owner.post(url).status_code == 201
        yield url, app


def _log_size(url: str) -> int:
    return int(httpx.get(url + "/healthz").json()["log_size"])


def _key_file(model: SignedModel, folder: Path) -> Path:
    path = folder / "publisher.key"
    model.key.save(path)
    return path


def _logged(app: FastAPI, index: int) -> bytes:
    (entry,) = app.state.coordinator.log.entries(index, index + 1)
    return bytes(entry)


# -- a) a second publisher under a taken name -----------------------------------------------------


def test_a_second_publisher_under_a_taken_name_is_refused_and_nothing_is_logged(
    hub: Hub, owner: SignedModel, attacker: SignedModel, tmp_path: Path
) -> None:
    url, _ = hub
    size = _log_size(url)
    with Client(url, verify=False) as client, pytest.raises(VerificationError) as caught:
        client.publish(attacker.folder, _key_file(attacker, tmp_path))
    assert caught.value.check == "namespace"
    assert "'acme'" in caught.value.message
    assert _log_size(url) == size
    assert [m["version"] for m in httpx.get(url + "/v1/models").json()["models"]] == ["1"]
    onnx = Digest.of((attacker.folder / "model.onnx").read_bytes())
    assert httpx.get(f"{url}/v1/blobs/{onnx}").status_code == 404
    # The name, bare or versioned, still means the owner's model.
    for ref in ("acme/iris", "acme/iris@1"):
        got = httpx.get(f"{url}/v1/models/{ref}").json()
        assert got["publisher"]["key_id"] == owner.key.key_id


def test_republishing_the_owners_own_folder_under_another_key_is_refused(
    hub: Hub, owner: SignedModel, tmp_path: Path
) -> None:
    # The attacker re-signs the owner's exact folder with its own key.
    url, _ = hub
    stolen = copy_model(owner, tmp_path / "stolen")
    thief = SignedModel(stolen.folder, generate_key("ec"))
    with Client(url, verify=False) as client, pytest.raises(VerificationError) as caught:
        client.publish(stolen.folder, _key_file(thief, tmp_path))  # re-signs model.sig
    assert caught.value.check == "namespace"


# -- b) a forged log -----------------------------------------------------------------------------


def _forged(owner: SignedModel, attacker: SignedModel) -> ModelEntry:
    """The attacker's model entry under the owner's name, as a coordinator would forge it."""
    return ModelEntry(
        digest=Digest.of(b"the attacker's weights"),
        files_digest=Digest.of(b"the attacker's files"),
        name="acme/iris",
        version="2",
        publisher_key_id=attacker.key.key_id,
        publisher_key=attacker.key.public.to_pem().decode(),
        signature=Digest.of(b"model.sig"),
        size=1,
        registered_at=utc_now(),
    )


def test_a_log_with_a_model_entry_under_another_keys_namespace_does_not_fold(
    hub: Hub, owner: SignedModel, attacker: SignedModel
) -> None:
    url, app = hub
    genuine = app.state.coordinator.log.entries(0, _log_size(url))
    fold(genuine)  # the coordinator's own log folds
    forged = _forged(owner, attacker)
    with pytest.raises(LedgerError) as caught:
        fold([*genuine, forged.to_bytes()])
    assert caught.value.evidence["index"] == len(genuine)
    # Nor can the forger claim the namespace again first.
    reclaim = NamespaceEntry(
        "acme", attacker.key.public.to_pem().decode(), forged.digest, utc_now()
    )
    with pytest.raises(LedgerError) as caught:
        fold([*genuine, reclaim.to_bytes(), forged.to_bytes()])
    assert caught.value.evidence["index"] == len(genuine)


def test_veriml_log_audit_rejects_a_coordinator_log_with_such_an_entry(
    tmp_path: Path, owner: SignedModel, attacker: SignedModel
) -> None:
    with running_coordinator(tmp_path / "home") as (url, app):
        assert owner.post(url).status_code == 201
        vkey = httpx.get(url + "/v1/info").json()["log_vkey"]
        audit = ["log", "audit", url + "/log", "--vkey", vkey, "--ledger"]
        clean = CliRunner().invoke(cli, audit)
        assert clean.exit_code == 0, clean.output
        # The coordinator bypasses its hub and writes the forged entry into its own log.
        index = app.state.coordinator.log.add(_forged(owner, attacker).to_bytes())
        result = CliRunner().invoke(cli, audit)
    assert result.exit_code == 1
    assert isinstance(result.exception, VerificationError)
    assert result.exception.check == "ledger"
    assert result.exception.evidence["index"] == index


# -- c) unsigned uploads, refused by default -------------------------------------------------------


def _unsigned_tar(model: SignedModel, dest: Path) -> bytes:
    copy = copy_model(model, dest)
    (copy.folder / "model.sig").unlink()
    return copy.tar()


def test_an_unsigned_upload_is_refused_by_default(
    hub: Hub, attacker: SignedModel, tmp_path: Path
) -> None:
    url, _ = hub
    size = _log_size(url)
    body = _unsigned_tar(attacker, tmp_path / "unsigned")
    anonymous = httpx.post(url + "/v1/models", content=body)
    assert anonymous.status_code == 403
    assert anonymous.json()["check"] == "publisher-key"
    # Naming a key without its signature, or signing the request without signing the model.
    assert attacker.post(url, body).json()["check"] == "signature-file"
    assert _log_size(url) == size


# -- d) unsigned models where the operator allows them -------------------------------------------


def test_an_allowed_unsigned_model_is_marked_everywhere_and_no_name_reaches_it(
    tmp_path: Path, owner: SignedModel, attacker: SignedModel
) -> None:
    with running_coordinator(tmp_path / "home", allow_unsigned_publish=True) as (url, _):
        assert owner.post(url).status_code == 201
        # Unsigned, under the owner's very name and a newer version.
        made = httpx.post(url + "/v1/models", content=_unsigned_tar(attacker, tmp_path / "u"))
        assert made.status_code == 201, made.text
        digest = made.json()["digest"]
        listing = httpx.get(url + "/v1/models").json()
        marked = {m["digest"]: (m["unsigned"], m["publisher"]) for m in listing["models"]}
        assert marked[digest] == (True, None)
        owned_by = {m["id"]: m["owned_by"] for m in listing["data"]}
        assert owned_by[digest] == "unsigned"
        assert owned_by["acme/iris@1"] == owner.key.key_id
        one = httpx.get(f"{url}/v1/models/{digest}").json()
        assert (one["unsigned"], one["publisher"], one["namespace"]) == (True, None, None)
        shown = CliRunner().invoke(cli, ["models", "--coordinator", url], env={"COLUMNS": "240"})
        assert shown.exit_code == 0, shown.output
        row = next(line for line in shown.output.splitlines() if digest in line)
        assert "UNSIGNED" in row
        # No name reaches it: not the bare name (the owner's latest), not its version.
        assert httpx.get(url + "/v1/models/acme/iris").json()["version"] == "1"
        assert httpx.get(url + "/v1/models/acme/iris@2").status_code == 404
        ran = httpx.post(url + "/v1/inferences", json={"model": "acme/iris@2", "inputs": {}})
        assert ran.status_code == 404
        # The owner can still publish that version, signed.
        version_two = make_signed_model(tmp_path, name="acme/iris", version="2", key=owner.key)
        assert version_two.post(url).status_code == 201
        assert httpx.get(url + "/v1/models/acme/iris@2").json()["unsigned"] is False


# -- e) provenance a coordinator could cite --------------------------------------------------------


def test_check_provenance_refuses_what_a_lying_coordinator_could_cite(
    hub: Hub, owner: SignedModel, attacker: SignedModel
) -> None:
    url, app = hub
    record = httpx.get(url + "/v1/models/acme/iris@1").json()
    digest = Digest.from_text(record["digest"])
    cited = app.state.coordinator.hub.provenance(digest)
    assert cited.namespace is not None
    model, claim = _logged(app, cited.model), _logged(app, cited.namespace)
    assert check_provenance("acme/iris@1", digest, model, claim).publisher == owner.key.key_id

    genuine = parse_entry(model)
    assert isinstance(genuine, ModelEntry)
    attackers = attacker.key.public.to_pem().decode()
    other_publisher = dataclasses.replace(
        genuine, publisher_key_id=attacker.key.key_id, publisher_key=attackers
    )
    other_name = dataclasses.replace(genuine, name="acme/lily")
    other_claim = NamespaceEntry("acme", attackers, digest, utc_now())
    for model_bytes, claim_bytes in [
        (other_publisher.to_bytes(), claim),  # the attacker's entry, the owner's claim
        (model, other_claim.to_bytes()),  # the owner's entry, a claim by the attacker
        (other_name.to_bytes(), claim),  # the owner's model, but logged under another name
    ]:
        with pytest.raises(VerificationError) as caught:
            check_provenance("acme/iris@1", digest, model_bytes, claim_bytes)
        assert caught.value.check == "provenance"
    # An attacker's entry *with* the attacker's own claim is self-consistent: what refuses it
    # is the fold (test b: a namespace is claimed once), which auditors run over the log.
