"""check_provenance: a model reference means its publisher's model, from the logged model entry
and the namespace claim; every mismatch names what differs, and unsigned models own no name."""

from __future__ import annotations

import json

import pytest

from veriml.core.digest import Digest
from veriml.core.errors import VerificationError
from veriml.core.keys import SigningKey, generate_key
from veriml.ledger.entries import ModelEntry, NamespaceEntry
from veriml.verify import Provenance, check_provenance

AT = "2026-11-26T10:00:00.000000Z"
ACME = generate_key("ec")
MALLORY = generate_key("ec")
IRIS = Digest.of(b"acme/iris 1.0")


def model_entry(
    name: str = "acme/iris",
    version: str = "1.0",
    *,
    digest: Digest = IRIS,
    key: SigningKey | None = ACME,
) -> ModelEntry:
    pem = None if key is None else key.public.to_pem().decode()
    return ModelEntry(
        digest=digest,
        files_digest=Digest.of(b"files of " + digest.to_text().encode()),
        name=name,
        version=version,
        publisher_key_id=None if key is None else key.key_id,
        publisher_key=pem,
        signature=None if key is None else Digest.of(b"model.sig"),
        size=1234,
        registered_at=AT,
    )


def claim(namespace: str = "acme", key: SigningKey = ACME) -> NamespaceEntry:
    return NamespaceEntry(namespace, key.public.to_pem().decode(), IRIS, AT)


def refused(*args: object, **kwargs: object) -> VerificationError:
    with pytest.raises(VerificationError) as caught:
        check_provenance(*args, **kwargs)  # type: ignore[arg-type]
    assert caught.value.check == "provenance"
    return caught.value


@pytest.mark.parametrize("ref", ["acme/iris", "acme/iris@1.0", IRIS.to_text()])
def test_a_name_version_or_digest_of_the_owners_model_passes(ref: str) -> None:
    got = check_provenance(ref, IRIS, model_entry().to_bytes(), claim().to_bytes())
    assert got == Provenance("acme/iris", "1.0", ACME.key_id, "acme", unsigned=False)


def test_a_name_without_a_slash_is_its_own_namespace() -> None:
    entry = model_entry("iris").to_bytes()
    got = check_provenance("iris@1.0", IRIS, entry, claim("iris").to_bytes())
    assert got.namespace == "iris"
    assert got.publisher == ACME.key_id


def test_an_entry_for_another_model_is_refused() -> None:
    other = Digest.of(b"mallory's model")
    error = refused("acme/iris", other, model_entry().to_bytes(), claim().to_bytes())
    assert error.evidence == {"expected": other.to_text(), "got": IRIS.to_text()}


def test_a_reference_to_another_digest_is_refused() -> None:
    other = Digest.of(b"another").to_text()
    error = refused(other, IRIS, model_entry().to_bytes(), claim().to_bytes())
    assert error.evidence["ref"] == other


@pytest.mark.parametrize(
    ("ref", "differs"),
    [("acme/lily", "name"), ("acme/iris@2.0", "version"), ("acme/iris@", "version")],
)
def test_an_entry_for_another_name_or_version_is_refused(ref: str, differs: str) -> None:
    error = refused(ref, IRIS, model_entry().to_bytes(), claim().to_bytes())
    assert differs in error.message


def test_a_model_of_another_publisher_under_an_owned_name_is_refused() -> None:
    # Mallory's model entry names acme/iris; the claim on "acme" is ACME's.
    forged = model_entry(key=MALLORY).to_bytes()
    error = refused("acme/iris", IRIS, forged, claim().to_bytes())
    assert error.evidence == {
        "namespace": "acme",
        "owner": ACME.key_id,
        "publisher": MALLORY.key_id,
    }


def test_a_claim_of_the_namespace_by_another_key_is_refused() -> None:
    error = refused("acme/iris", IRIS, model_entry().to_bytes(), claim(key=MALLORY).to_bytes())
    assert error.evidence["owner"] == MALLORY.key_id


def test_a_claim_of_another_namespace_is_refused() -> None:
    error = refused("acme/iris", IRIS, model_entry().to_bytes(), claim("acme2").to_bytes())
    assert error.evidence == {"expected": "acme", "got": "acme2"}


def test_a_signed_model_without_its_namespace_claim_is_refused() -> None:
    refused(IRIS.to_text(), IRIS, model_entry().to_bytes(), None)


def test_a_publisher_key_id_that_is_not_its_keys_is_refused() -> None:
    # Bytes a forger writes by hand: Mallory's key under ACME's key id (which owns "acme").
    entry = json.loads(model_entry(key=MALLORY).to_bytes())
    entry["publisher"]["key_id"] = ACME.key_id
    forged = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    error = refused("acme/iris", IRIS, forged, claim().to_bytes())
    assert "publisher key id" in error.diagnostics()
    assert MALLORY.key_id in error.diagnostics()


def test_evidence_that_is_not_the_entry_it_should_be_is_refused() -> None:
    refused("acme/iris", IRIS, claim().to_bytes(), claim().to_bytes())
    refused("acme/iris", IRIS, model_entry().to_bytes(), model_entry().to_bytes())
    refused("acme/iris", IRIS, b"{not json", claim().to_bytes())


def test_an_unsigned_model_is_refused_unless_allowed_and_named_by_digest() -> None:
    unsigned = model_entry(key=None).to_bytes()
    refused(IRIS.to_text(), IRIS, unsigned, None)
    got = check_provenance(IRIS.to_text(), IRIS, unsigned, None, allow_unsigned=True)
    assert got == Provenance("acme/iris", "1.0", None, None, unsigned=True)
    for ref in ("acme/iris", "acme/iris@1.0"):
        error = refused(ref, IRIS, unsigned, None, allow_unsigned=True)
        assert "digest only" in error.message
    # Nor can a namespace claim lend it a name.
    refused(IRIS.to_text(), IRIS, unsigned, claim().to_bytes(), allow_unsigned=True)


def test_allowing_unsigned_models_changes_nothing_for_signed_ones() -> None:
    forged = model_entry(key=MALLORY).to_bytes()
    refused("acme/iris", IRIS, forged, claim().to_bytes(), allow_unsigned=True)
