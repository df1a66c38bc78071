"""What an account signs (veriml.protocol.accounts): an operator's binding of a node, and a
request to move its own money. Each opens only when signed by the key it carries, with exactly
its members, for the node, account and op the caller expects."""

from __future__ import annotations

import json
from typing import Any

import pytest

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Signature
from veriml.core.errors import FormatError, KeyFileError, SignatureError, VerificationError
from veriml.core.keys import generate_key
from veriml.protocol.accounts import (
    LEDGER_OPS,
    LEDGER_REQUEST_TYPE,
    OPERATOR_BINDING_TYPE,
    LedgerRequest,
    OperatorBinding,
    account_key,
)

AT = "2026-11-26T10:00:00.000000Z"
OPERATOR, NODE, OTHER = generate_key(), generate_key(), generate_key()


# -- operator bindings ------------------------------------------------------------------------


def test_an_operator_binding_opens_for_its_node_and_names_its_operator() -> None:
    envelope = OperatorBinding.of(OPERATOR, NODE.key_id, issued_at=AT).sign(OPERATOR)
    assert envelope.payload_type == OPERATOR_BINDING_TYPE
    assert json.loads(envelope.payload) == {
        "type": "operator-binding",
        "operator": OPERATOR.key_id,
        "public_key": OPERATOR.public.to_pem().decode(),
        "node": NODE.key_id,
        "issued_at": AT,
    }
    binding = OperatorBinding.open(envelope, node=NODE.key_id, operator=OPERATOR.key_id)
    assert (binding.operator, binding.node) == (OPERATOR.key_id, NODE.key_id)


@pytest.mark.parametrize("wanted", ["node", "operator"])
def test_a_binding_for_another_node_or_operator_is_refused(wanted: str) -> None:
    envelope = OperatorBinding.of(OPERATOR, NODE.key_id, issued_at=AT).sign(OPERATOR)
    with pytest.raises(VerificationError) as info:
        OperatorBinding.open(envelope, **{wanted: OTHER.key_id})
    assert info.value.check == "operator-binding"
    assert info.value.evidence["expected"] == OTHER.key_id


def test_only_the_operators_key_signs_its_binding() -> None:
    binding = OperatorBinding.of(OPERATOR, NODE.key_id, issued_at=AT)
    with pytest.raises(KeyFileError):
        binding.sign(OTHER)
    resigned = Envelope.sign(
        canonicalize(binding.to_json()), [OTHER], payload_type=OPERATOR_BINDING_TYPE
    )
    with pytest.raises(SignatureError):
        OperatorBinding.open(resigned)
    # The signer's own key in the payload, another operator's account id beside it.
    claimed = OperatorBinding.of(OTHER, NODE.key_id, issued_at=AT).to_json()
    claimed["operator"] = OPERATOR.key_id
    mislabelled = Envelope.sign(canonicalize(claimed), [OTHER], payload_type=OPERATOR_BINDING_TYPE)
    with pytest.raises(VerificationError, match="names another account"):
        OperatorBinding.open(mislabelled)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"type": "node-descriptor"}, id="type"),
        pytest.param({"extra": 1}, id="unknown-member"),
        pytest.param({"node": ""}, id="node-empty"),
        pytest.param({"issued_at": "2026-11-26T10:00:00Z"}, id="time-spelling"),
    ],
)
def test_a_malformed_binding_is_a_format_error(changes: dict[str, Any]) -> None:
    obj = OperatorBinding.of(OPERATOR, NODE.key_id, issued_at=AT).to_json() | changes
    envelope = Envelope.sign(canonicalize(obj), [OPERATOR], payload_type=OPERATOR_BINDING_TYPE)
    with pytest.raises(FormatError):
        OperatorBinding.open(envelope)


def test_a_ledger_request_is_not_a_binding() -> None:
    request = LedgerRequest.signed(OPERATOR, "stake", 5, issued_at=AT)
    with pytest.raises(VerificationError) as info:
        OperatorBinding.open(request)
    assert info.value.check == "operator-binding"


# -- ledger requests --------------------------------------------------------------------------

MEMBERS: dict[str, dict[str, str]] = {
    "stake": {},
    "unstake": {},
    "deposit": {"to": "sha256:" + "0" * 64, "memo": ""},
    "payment": {"request": "req-1"},
    "challenge": {"inference": "req-1", "node": "sha256:" + "1" * 64},
}
COMMON = {"type", "op", "account", "public_key", "amount", "nonce", "issued_at"}


def test_every_op_is_documented_here() -> None:
    assert set(LEDGER_OPS) == set(MEMBERS)


@pytest.mark.parametrize("op", LEDGER_OPS)
def test_a_signed_request_round_trips_with_exactly_its_ops_members(op: str) -> None:
    envelope = LedgerRequest.signed(OPERATOR, op, 5, issued_at=AT, **MEMBERS[op])
    assert envelope.payload_type == LEDGER_REQUEST_TYPE
    payload = json.loads(envelope.payload)
    assert set(payload) == COMMON | set(MEMBERS[op])
    assert (payload["account"], payload["amount"], payload["op"]) == (OPERATOR.key_id, 5, op)
    request = LedgerRequest.open(envelope, op=op, account=OPERATOR.key_id)
    assert request.account == OPERATOR.key_id
    assert LedgerRequest.open(request.sign(OPERATOR)) == request
    for member in sorted(set(payload) - {"type"}):
        partial = {k: v for k, v in payload.items() if k != member}
        # Without "account" the payload names no account of its signer's: refused as such.
        with pytest.raises(VerificationError if member == "account" else FormatError):
            LedgerRequest.open(_signed_payload(partial))
    with pytest.raises(FormatError, match="exactly its op's members"):
        LedgerRequest.open(_signed_payload(payload | {"note": "x"}))


def _signed_payload(obj: dict[str, Any]) -> Envelope:
    return Envelope.sign(canonicalize(obj), [OPERATOR], payload_type=LEDGER_REQUEST_TYPE)


@pytest.mark.parametrize("op", LEDGER_OPS)
def test_a_request_has_its_ops_members_and_no_others_when_built(op: str) -> None:
    for missing in MEMBERS[op]:
        members = {k: v for k, v in MEMBERS[op].items() if k != missing}
        with pytest.raises(FormatError, match="needs"):
            LedgerRequest.signed(OPERATOR, op, 5, issued_at=AT, **members)
    stray = "request" if op != "payment" else "to"
    with pytest.raises(FormatError, match="has no"):
        LedgerRequest.signed(OPERATOR, op, 5, issued_at=AT, **MEMBERS[op], **{stray: "x"})


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"op": "mint"}, id="unknown-op"),
        pytest.param({"amount": -1}, id="amount-negative"),
        pytest.param({"amount": 2**53}, id="amount-2^53"),
        pytest.param({"amount": True}, id="amount-bool"),
        pytest.param({"amount": 5.0}, id="amount-float"),
        pytest.param({"nonce": "ab" * 15}, id="nonce-short"),
        pytest.param({"nonce": "AB" * 16}, id="nonce-upper"),
        pytest.param({"request": ""}, id="request-empty"),
        pytest.param({"request": "r" * 257}, id="request-257"),
    ],
)
def test_a_malformed_request_cannot_be_built(changes: dict[str, Any]) -> None:
    members: dict[str, Any] = {
        "op": "payment",
        "public_key": OPERATOR.public.to_pem().decode(),
        "amount": 5,
        "issued_at": AT,
        "request": "req-1",
    }
    with pytest.raises(FormatError):
        LedgerRequest(**(members | changes))


def test_a_request_opens_only_for_its_op_and_its_account() -> None:
    envelope = LedgerRequest.signed(OPERATOR, "stake", 5, issued_at=AT)
    for wanted in ({"op": "unstake"}, {"account": OTHER.key_id}):
        with pytest.raises(VerificationError) as info:
            LedgerRequest.open(envelope, **wanted)
        assert info.value.check == "ledger-request"


def test_only_the_accounts_own_key_signs_its_request() -> None:
    request = LedgerRequest.open(LedgerRequest.signed(OPERATOR, "stake", 5, issued_at=AT))
    with pytest.raises(KeyFileError):
        request.sign(OTHER)
    stolen = Envelope(
        LEDGER_REQUEST_TYPE,
        canonicalize(request.to_json()),
        (Signature(OPERATOR.key_id, OTHER.sign(canonicalize(request.to_json()))),),
    )
    with pytest.raises(SignatureError):
        LedgerRequest.open(stolen)


def test_each_request_is_single_use_by_its_nonce_and_its_payload_digest() -> None:
    one = LedgerRequest.signed(OPERATOR, "stake", 5, issued_at=AT)
    two = LedgerRequest.signed(OPERATOR, "stake", 5, issued_at=AT)
    assert LedgerRequest.open(one).nonce != LedgerRequest.open(two).nonce
    assert LedgerRequest.digest_of(one) != LedgerRequest.digest_of(two)
    assert LedgerRequest.digest_of(one) == Digest.of(one.payload)
    # Another signature on the same payload is the same request.
    cosigned = Envelope(one.payload_type, one.payload, (*one.signatures, *two.signatures))
    assert LedgerRequest.digest_of(cosigned) == LedgerRequest.digest_of(one)


def test_an_ec_key_is_an_account_too() -> None:
    ec = generate_key("ec")
    request = LedgerRequest.open(LedgerRequest.signed(ec, "unstake", 1, issued_at=AT))
    assert request.account == ec.key_id == account_key(ec.public.to_pem().decode()).key_id


@pytest.mark.parametrize("text", ["", "not a key", "-----BEGIN PUBLIC KEY-----\n" + "A" * 5000])
def test_an_account_key_is_a_pem_public_key(text: str) -> None:
    with pytest.raises(FormatError):
        account_key(text)


def test_an_oversized_request_is_refused_before_it_is_parsed() -> None:
    envelope = _signed_payload({"type": "ledger-request", "pad": "x" * 17_000})
    with pytest.raises(FormatError, match="too large"):
        LedgerRequest.open(envelope)
