"""The log's non-ledger entries (docs/network.md, "Log entries"): models (signed, or unsigned
and marked so), nodes with their operator's binding, and inferences whose logged request
members no unsigned addition can replace."""

from __future__ import annotations

import json

import pytest

from _ledger import (
    ACME,
    ACME_NODE,
    ACME_NODE_2,
    OUTPUT,
    binding,
    descriptor,
    drawn,
    inference,
    model,
    node_entry,
)
from veriml.core import Digest
from veriml.core.canonical import canonicalize
from veriml.core.errors import FormatError, VerificationError
from veriml.ledger import Entry, InferenceEntry, ModelEntry, NodeEntry, parse_entry
from veriml.ledger.entries import REQUEST_MEMBERS
from veriml.protocol.policy import DisputeRef, Verdict


def _entries() -> list[Entry]:
    return [
        model("acme/iris", ACME),
        model("iris", None),
        node_entry(ACME_NODE, ACME),
        inference("r-1", ACME_NODE),
        inference("r-2", ACME_NODE, outcome="rejected", state=0, extra={"client": "sha256:c"}),
        inference("r-3", ACME_NODE, ACME_NODE_2, draw=drawn("r-3", 4), extra={"kind": "chat"}),
    ]


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: type(e).__name__)
def test_every_log_entry_round_trips_through_its_logged_bytes(entry: Entry) -> None:
    data = entry.to_bytes()
    assert parse_entry(data) == entry
    assert parse_entry(data).to_bytes() == data


# -- models -----------------------------------------------------------------------------------


def test_a_signed_model_names_its_publisher_and_its_namespace() -> None:
    entry = model("acme/iris", ACME)
    logged = json.loads(entry.to_bytes())
    assert logged["publisher"] == {
        "key_id": ACME.key_id,
        "public_key": ACME.public.to_pem().decode(),
    }
    assert "unsigned" not in logged
    assert (entry.unsigned, entry.namespace) == (False, "acme")
    assert model("iris", ACME).namespace == "iris"


def test_an_unsigned_model_says_so_and_has_neither_publisher_nor_signature() -> None:
    entry = model("acme/iris", None)
    logged = json.loads(entry.to_bytes())
    assert (logged["publisher"], logged["signature"], logged["unsigned"]) == (None, None, True)
    assert entry.unsigned


@pytest.mark.parametrize(
    "missing", ["publisher_key_id", "publisher_key", "signature"], ids=lambda m: f"no-{m}"
)
def test_a_model_has_a_publisher_and_a_signature_or_neither(missing: str) -> None:
    signed = model("acme/iris", ACME)
    members = {f: getattr(signed, f) for f in ModelEntry.__dataclass_fields__} | {missing: None}
    with pytest.raises(FormatError, match="or neither"):
        ModelEntry(**members)


@pytest.mark.parametrize(
    ("base", "changes"),
    [
        pytest.param(model("iris", None), {"unsigned": False}, id="unsigned-false"),
        pytest.param(model("iris", None), {"unsigned": None}, id="unsigned-null"),
        pytest.param(model("iris", ACME), {"unsigned": True}, id="signed-says-unsigned"),
        pytest.param(model("iris", ACME), {"publisher": None}, id="no-publisher-not-marked"),
        pytest.param(model("iris", ACME), {"signature": None}, id="publisher-no-signature"),
    ],
)
def test_only_a_model_without_a_publisher_says_unsigned_true(
    base: ModelEntry, changes: dict[str, object]
) -> None:
    with pytest.raises(FormatError):
        parse_entry(canonicalize(base.to_json() | changes))


# -- nodes ------------------------------------------------------------------------------------


def test_a_node_entry_rechecks_its_descriptor_and_binding_from_the_log_alone() -> None:
    signed = descriptor(ACME_NODE, ACME)
    entry = parse_entry(NodeEntry(signed.sign(ACME_NODE)).to_bytes())
    assert isinstance(entry, NodeEntry)
    opened = entry.open()
    assert opened == signed
    assert (opened.node_id, opened.operator) == (ACME_NODE.key_id, ACME.key_id)


def test_a_node_entry_with_a_binding_for_another_node_does_not_open() -> None:
    borrowed = descriptor(ACME_NODE, ACME, operator_binding=binding(ACME, ACME_NODE_2))
    entry = parse_entry(NodeEntry(borrowed.sign(ACME_NODE)).to_bytes())  # parsing checks format
    assert isinstance(entry, NodeEntry)
    with pytest.raises(VerificationError) as info:
        entry.open()
    assert info.value.check == "operator-binding"


# -- inferences -------------------------------------------------------------------------------


@pytest.mark.parametrize("member", REQUEST_MEMBERS)
def test_an_inference_extra_member_may_not_replace_a_logged_request_member(member: str) -> None:
    assert set(REQUEST_MEMBERS) == {"id", "digest", "model", "policy"}
    with pytest.raises(FormatError, match="may not replace"):
        inference("r-1", ACME_NODE, extra={member: "something else"})


def test_an_inference_request_keeps_its_own_members_and_its_extras_beside_them() -> None:
    entry = inference("r-1", ACME_NODE, extra={"client": "sha256:c", "kind": "chat"})
    request = json.loads(entry.to_bytes())["request"]
    assert request == {
        "id": "r-1",
        "digest": entry.request_digest.to_text(),
        "model": entry.model.to_text(),
        "policy": "none",
        "client": "sha256:c",
        "kind": "chat",
    }
    parsed = parse_entry(entry.to_bytes())
    assert isinstance(parsed, InferenceEntry)
    assert (parsed.request_id, dict(parsed.extra)) == (
        "r-1",
        {"client": "sha256:c", "kind": "chat"},
    )


def test_an_inference_cites_its_state_entry_by_index_and_omits_it_when_none() -> None:
    assert "state" not in json.loads(inference("r-1", ACME_NODE).to_bytes())
    cited = inference("r-1", ACME_NODE, state=7)
    assert json.loads(cited.to_bytes())["state"] == 7
    obj = cited.to_json()
    for bad in (None, -1, 1.5, True, "7"):
        with pytest.raises(FormatError):
            parse_entry(canonicalize(obj | {"state": bad}))
    with pytest.raises(FormatError, match="unknown members"):
        parse_entry(canonicalize(obj | {"note": "added later"}))


def test_an_inference_verdict_reveals_its_draw_and_cites_its_disputes() -> None:
    draw = drawn("r-1", 2)
    dispute = DisputeRef("d", ACME_NODE.key_id, "w", "challenger", log_index=9, opened=8)
    entry = InferenceEntry(
        request_id="r-1",
        request_digest=Digest.of(b"request r-1"),
        model=Digest.of(b"model"),
        policy="none",
        receipts=inference("r-1", ACME_NODE).receipts,
        verdict=Verdict("none", "rejected", (), {"y": OUTPUT}, disputes=(dispute,), draw=draw),
    )
    logged = json.loads(entry.to_bytes())["verdict"]
    assert logged["draw"] == {"epoch": 2, "secret": draw.secret.hex()}
    assert logged["disputes"][0]["opened"] == 8
    assert parse_entry(entry.to_bytes()) == entry


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"type": "unknown"}',
        b'{"type": "model"}',
        b'{"type": "node", "descriptor": 1}',
        b'{"type": "inference", "request": {"id": "r"}}',
        b"{",
    ],
)
def test_malformed_entries_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_entry(data)


def test_oversized_entries_are_refused() -> None:
    with pytest.raises(FormatError, match="too large"):
        parse_entry(b'{"type":"model","x":"' + b"a" * 70_000 + b'"}')
