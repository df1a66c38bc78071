"""Which challenges open (docs/verification.md, "Opening a dispute"): every policy has a
challenge window, a challenger bonds with its own signature for exactly this dispute, and a
claim is disputed once; each refusal happens before anything is logged."""

from __future__ import annotations

import datetime as dt

import pytest

from _ledger import ADMIN, BOLT, BOLT_NODE, WATCHER, account, challenge, deposit, ledger, node_entry
from veriml.coordinator.disputes.admission import (
    WindowClosedError,
    bond_authorization,
    challenge_closes,
    check_challenge,
    check_window,
)
from veriml.core.errors import ConflictError, PaymentRequiredError, SignatureError
from veriml.core.timestamps import format_time
from veriml.protocol.accounts import LedgerRequest

NOW = dt.datetime(2026, 11, 26, 12, tzinfo=dt.UTC)
NODE = BOLT_NODE.key_id


def _at(seconds: float) -> str:
    return format_time(NOW + dt.timedelta(seconds=seconds))


def test_an_answer_s_window_is_its_final_after_else_its_time_plus_the_rules_window() -> None:
    optimistic = {"id": "a", "verdict": {"final_after": _at(600)}}
    assert challenge_closes(optimistic, answered_at=_at(0), window=86_400) == NOW + dt.timedelta(
        seconds=600
    )
    spot = {"id": "b", "verdict": {"policy": "spot:0.5"}}
    closes = challenge_closes(spot, answered_at=_at(0), window=86_400)
    assert closes == NOW + dt.timedelta(days=1)
    assert challenge_closes(spot, answered_at=None, window=86_400) is None


def test_a_challenge_after_the_window_is_refused_with_the_time_it_closed() -> None:
    spot = {"id": "b", "verdict": {"policy": "spot:0.5"}}
    check_window(spot, answered_at=_at(0), window=60, now=NOW + dt.timedelta(seconds=59))
    with pytest.raises(WindowClosedError) as closed:
        check_window(spot, answered_at=_at(0), window=60, now=NOW + dt.timedelta(seconds=60))
    assert closed.value.evidence["final_after"] == _at(60)


def _bond(key: object = WATCHER, amount: int = 10, **members: str) -> dict[str, object]:
    signed = LedgerRequest.signed(
        key,  # type: ignore[arg-type]
        "challenge",
        amount,
        issued_at=members.pop("issued_at", _at(0)),
        inference=members.pop("inference", "req-1"),
        node=members.pop("node", NODE),
    )
    return signed.to_json()


def _check(raw: object, *, bond: int = 10) -> object:
    return bond_authorization(
        raw, signer=WATCHER.key_id, inference="req-1", node=NODE, bond=bond, now=NOW
    )


def test_a_bond_is_the_challenger_s_own_signed_request_for_exactly_this_dispute() -> None:
    assert _check(_bond()) is not None
    assert _check(_bond(amount=0), bond=0) is not None  # no bond: still how it signs in
    for bond in (0, 10):
        with pytest.raises(PaymentRequiredError, match="attach"):
            _check(None, bond=bond)
    for wrong in (
        _bond(amount=9),
        _bond(inference="req-2"),
        _bond(node=account("acme-node-1").key_id),
        _bond(issued_at=_at(-600)),
    ):
        with pytest.raises(PaymentRequiredError):
            _check(wrong)
    with pytest.raises(PaymentRequiredError):
        _check({"payload": "not an envelope"})
    payment = LedgerRequest.signed(WATCHER, "payment", 10, issued_at=_at(0), request="req-1")
    with pytest.raises(PaymentRequiredError):
        _check(payment.to_json())
    with pytest.raises(SignatureError) as other:
        _check(_bond(key=ADMIN))  # signed by another key than the request's signer
    assert other.value.check == "bond-authorization"


def test_a_claim_is_opened_once_and_only_with_a_bond_the_balance_covers() -> None:
    state = ledger(node_entry(BOLT_NODE, BOLT), deposit(WATCHER, 15))  # the fold knows the node
    first = challenge("d-1", BOLT_NODE, WATCHER, bond=10)
    check_challenge(state, first)
    with pytest.raises(ConflictError, match="already disputed"):
        check_challenge(state, first, opening={first.claim})  # one being opened now
    state.apply(first)
    again = challenge("d-2", BOLT_NODE, WATCHER, bond=0, outputs=dict(first.challenger["outputs"]))
    with pytest.raises(ConflictError, match="already disputed"):
        check_challenge(state, again)
    poorer = challenge("d-3", BOLT_NODE, WATCHER, bond=10)
    with pytest.raises(PaymentRequiredError, match="balance"):
        check_challenge(state, poorer)
    unsigned = challenge("d-4", BOLT_NODE, WATCHER.key_id)  # an account that signed nothing
    with pytest.raises(ConflictError, match="signs its challenge"):
        check_challenge(state, unsigned)
