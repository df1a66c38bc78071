"""The coordinator's ledger over HTTP: every move of money is the account's own signed ledger
request (a DSSE envelope as the body), deposits are the admin's, a request is used once; the
state is folded from the log (live and from scratch at a size); the rules in force are public;
fees need a signed payment (402); stored tensors."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from _coordinator import running_coordinator
from _ledger import inference
from veriml.coordinator.ledger.service import LedgerBook, TensorStore
from veriml.coordinator.problems import status_for
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Signature, pae
from veriml.core.errors import NotFoundError, PaymentRequiredError
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest, tensor_from_canonical
from veriml.core.timestamps import format_time, parse_time
from veriml.ledger import (
    BondMap,
    DepositEntry,
    FeeEntry,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    parse_entry,
)
from veriml.ledger.state import LedgerError, fold
from veriml.models.blobstore import BlobStore
from veriml.protocol.accounts import LedgerRequest, OperatorBinding
from veriml.protocol.messages import NodeDescriptor

Coordinator = tuple[str, FastAPI, SigningKey]


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[Coordinator]:
    home = tmp_path / "home"
    with running_coordinator(home, unstake_delay=120.0, min_stake=50) as (url, app):
        admin = load_private_key(home / "coordinator" / "coordinator.key")
        yield url, app, admin


def _send(url: str, path: str, body: Envelope | dict[str, Any]) -> httpx.Response:
    return httpx.post(url + path, json=body.to_json() if isinstance(body, Envelope) else body)


def _deposit(admin: SigningKey, to: str, amount: int, **members: Any) -> Envelope:
    return LedgerRequest.signed(admin, "deposit", amount, to=to, memo="", **members)


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def _logged(app: FastAPI, start: int = 0) -> list[Any]:
    log = app.state.coordinator.log
    return [parse_entry(e) for e in log.entries(start, log.size)]


def _register(url: str, node: SigningKey, operator: SigningKey) -> None:
    descriptor = NodeDescriptor(
        public_key=node.public.to_pem().decode(),
        operator_binding=OperatorBinding.of(operator, node.key_id).sign(operator),
        endpoint="http://127.0.0.1:9001",
        issued_at=format_time(dt.datetime.now(dt.UTC)),
        nonce=secrets.token_hex(16),
    )
    assert _send(url, "/v1/nodes", descriptor.sign(node)).status_code == 201


def test_the_rules_in_force_are_public_and_name_the_coordinators_key_as_admin(
    coordinator: Coordinator,
) -> None:
    url, app, admin = coordinator
    answer = httpx.get(url + "/v1/ledger/rules")
    assert answer.status_code == 200
    body = answer.json()
    assert body["rules"]["admin"] == admin.key_id
    assert (body["rules"]["min_stake"], body["rules"]["unstake_delay"]) == (50, 120.0)
    # They are the rules the first state entry logged, before any request.
    first = _logged(app)[body["state"]]
    assert isinstance(first, StateEntry)
    assert first.rules.to_json() == body["rules"]
    assert body["epoch"] == 0


def test_deposit_stake_unstake_are_signed_requests_folded_into_the_state(
    coordinator: Coordinator,
) -> None:
    url, app, admin = coordinator
    operator, node = generate_key(), generate_key()
    _register(url, node, operator)
    deposited = _send(url, "/v1/ledger/deposit", _deposit(admin, operator.key_id, 300))
    assert deposited.status_code == 200, deposited.text
    assert deposited.json()["account"] == operator.key_id
    assert deposited.json()["state"]["balance"] == 300
    staked = _send(url, "/v1/ledger/stake", LedgerRequest.signed(operator, "stake", 200))
    assert staked.status_code == 200, staked.text
    unstaked = _send(url, "/v1/ledger/unstake", LedgerRequest.signed(operator, "unstake", 50))
    assert unstaked.status_code == 200, unstaked.text

    state = httpx.get(url + "/v1/ledger/state").json()
    account = state["accounts"][operator.key_id]
    assert (account["balance"], account["stake"]) == (100, 150)
    (unbonding,) = account["unbonding"]
    unstake_entry = _logged(app, unstaked.json()["log_index"])[0]
    assert isinstance(unstake_entry, UnstakeEntry)
    delay = parse_time(unbonding["available_at"]) - parse_time(unstake_entry.at)
    assert (unbonding["amount"], delay) == (50, dt.timedelta(seconds=120))
    assert state["totals"]["minted"] == 300
    # The fold from scratch at the log's size is the live state, byte for byte.
    assert httpx.get(url + f"/v1/ledger/state?size={state['size']}").json() == state
    # And an auditor folding the log's entries gets the same digest.
    log = app.state.coordinator.log
    assert fold(log.entries(0, log.size)).digest() == app.state.coordinator.ledger.state().digest()
    book: LedgerBook = app.state.coordinator.ledger
    assert book.schedulable(node.key_id)  # its operator's 150 >= min_stake 50
    assert not book.schedulable(operator.key_id)  # an account is not a node
    assert not book.schedulable(generate_key().key_id)  # an unregistered node


def test_a_change_of_stake_is_logged_with_the_new_bond_map_as_one_group(
    coordinator: Coordinator,
) -> None:
    url, app, admin = coordinator
    operator = generate_key()
    assert _send(url, "/v1/ledger/deposit", _deposit(admin, operator.key_id, 80)).status_code == 200
    before = app.state.coordinator.log.size
    staked = _send(url, "/v1/ledger/stake", LedgerRequest.signed(operator, "stake", 80))
    assert staked.json()["log_index"] == before
    stake_entry, state_entry = _logged(app, before)
    assert isinstance(stake_entry, StakeEntry)
    assert isinstance(state_entry, StateEntry)
    bonds = BondMap.of({operator.key_id: 80})
    assert (state_entry.root, state_entry.size) == (bonds.root(), 1)
    # A deposit moves no stake: no state entry follows it.
    before = app.state.coordinator.log.size
    assert _send(url, "/v1/ledger/deposit", _deposit(admin, operator.key_id, 1)).status_code == 200
    assert [type(e) for e in _logged(app, before)] == [DepositEntry]


def test_only_the_admin_deposits(coordinator: Coordinator) -> None:
    url, app, _ = coordinator
    stranger = generate_key()
    before = app.state.coordinator.log.size
    problem = _problem(
        _send(url, "/v1/ledger/deposit", _deposit(stranger, stranger.key_id, 5)), 403
    )
    assert problem["check"] == "ledger-request"
    assert app.state.coordinator.log.size == before


def test_a_replayed_ledger_request_is_refused(coordinator: Coordinator) -> None:
    url, app, admin = coordinator
    operator = generate_key()
    deposit = _deposit(admin, operator.key_id, 100)
    assert _send(url, "/v1/ledger/deposit", deposit).status_code == 200
    assert "already used" in _problem(_send(url, "/v1/ledger/deposit", deposit), 409)["detail"]
    stake = LedgerRequest.signed(operator, "stake", 10)
    assert _send(url, "/v1/ledger/stake", stake).status_code == 200
    before = app.state.coordinator.log.size
    assert "already used" in _problem(_send(url, "/v1/ledger/stake", stake), 409)["detail"]
    assert app.state.coordinator.log.size == before
    assert app.state.coordinator.ledger.state().account(operator.key_id).balance == 90


def test_ledger_requests_are_signed_by_their_account_for_their_route_and_recent(
    coordinator: Coordinator,
) -> None:
    url, app, admin = coordinator
    account = generate_key()
    assert _send(url, "/v1/ledger/deposit", _deposit(admin, account.key_id, 50)).status_code == 200
    before = app.state.coordinator.log.size
    # An unstake request posted as a stake: the signer did not ask for this move.
    unstake = LedgerRequest.signed(account, "unstake", 5)
    assert _problem(_send(url, "/v1/ledger/stake", unstake), 403)["check"] == "ledger-request"
    # Signed ten minutes ago: too old to log.
    old = format_time(dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    stale = LedgerRequest.signed(account, "stake", 5, issued_at=old)
    assert _problem(_send(url, "/v1/ledger/stake", stale), 403)["check"] == "freshness"
    # Signed by another key than the account it names.
    genuine = LedgerRequest.signed(account, "stake", 5)
    forged = Envelope(genuine.payload_type, genuine.payload, _stranger_signatures(genuine))
    _problem(_send(url, "/v1/ledger/stake", forged), 403)
    # More than the balance: a ledger rule, 409.
    overdraft = _send(url, "/v1/ledger/stake", LedgerRequest.signed(account, "stake", 51))
    assert "ledger rule" in _problem(overdraft, 409)["detail"]
    # Not an envelope at all, or an envelope without signatures.
    _problem(_send(url, "/v1/ledger/stake", {"amount": 5}), 400)
    _problem(_send(url, "/v1/ledger/stake", genuine.to_json() | {"signatures": []}), 400)
    assert app.state.coordinator.log.size == before
    assert httpx.get(url + "/v1/ledger/state?size=999").status_code == 404


def _stranger_signatures(envelope: Envelope) -> tuple[Signature, ...]:
    """``envelope``'s signatures, made again by a stranger under the same key ids."""
    stranger = generate_key()
    message = pae(envelope.payload_type, envelope.payload)
    return tuple(Signature(s.keyid, stranger.sign(message)) for s in envelope.signatures)


# -- fees -------------------------------------------------------------------------------------


@pytest.fixture
def paying(tmp_path: Path) -> Iterator[Coordinator]:
    home = tmp_path / "paying"
    with running_coordinator(home, fee_per_job=2) as (url, app):
        yield url, app, load_private_key(home / "coordinator" / "coordinator.key")


def test_a_coordinator_that_charges_fees_wants_a_signed_payment_that_covers_them(
    paying: Coordinator,
) -> None:
    url, app, admin = paying
    book: LedgerBook = app.state.coordinator.ledger
    client, stranger = generate_key(), generate_key()
    assert _send(url, "/v1/ledger/deposit", _deposit(admin, client.key_id, 5)).status_code == 200
    covering = LedgerRequest.signed(client, "payment", 4, request="req-1")
    book.check_payment(client.key_id, covering, "req-1", jobs=2)  # 2 jobs x 2: covered

    def refused(*args: Any, **kwargs: Any) -> PaymentRequiredError:
        with pytest.raises(PaymentRequiredError) as info:
            book.check_payment(*args, **kwargs)
        assert status_for(info.value) == 402
        return info.value

    assert refused(None, None, "req-1", jobs=1).evidence["fee_per_job"] == 2
    refused(client.key_id, None, "req-1", jobs=1)  # a signed request without a payment
    refused(client.key_id, covering, "req-2", jobs=1)  # a payment for another request
    assert refused(client.key_id, covering, "req-1", jobs=3).evidence["needed"] == 6
    refused(stranger.key_id, covering, "req-1", jobs=1)  # someone else's payment
    stake = LedgerRequest.signed(client, "stake", 1)
    refused(client.key_id, stake, "req-1", jobs=1)  # not a payment at all
    rich = LedgerRequest.signed(client, "payment", 100, request="req-3")
    assert refused(client.key_id, rich, "req-3", jobs=3).evidence["balance"] == 5


def test_fees_are_logged_per_answering_node_under_the_payment_and_earn_reputation(
    paying: Coordinator,
) -> None:
    url, app, admin = paying
    book: LedgerBook = app.state.coordinator.ledger
    client, operator = generate_key(), generate_key()
    node_a, node_b = generate_key(), generate_key()
    for node in (node_a, node_b):  # fees pay registered nodes, for receipts they signed
        _register(url, node, operator)
    assert _send(url, "/v1/ledger/deposit", _deposit(admin, client.key_id, 10)).status_code == 200
    payment = LedgerRequest.signed(client, "payment", 4, request="req-1")
    fees = book.fees(client.key_id, payment, [node_a.key_id, node_b.key_id], "req-1")
    assert [(f.payee, f.amount, f.inference) for f in fees] == [
        (node_a.key_id, 2, "req-1"),
        (node_b.key_id, 2, "req-1"),
    ]
    assert all(isinstance(f, FeeEntry) and f.authorization == payment for f in fees)
    # What the book would append right after the inference entry holding both nodes' receipts,
    # folded on a copy of its state: the fold accepts the fees.
    state = fold([inference("req-1", node_a, node_b), *fees], start=book.refresh().copy())
    assert state.account(client.key_id).balance == 6
    assert [state.reputation_of(n.key_id) for n in (node_a, node_b)] == [1, 1]
    # The payment is spent: one fee more would take more than it allows, even right after
    # the request's inference entry.
    state.apply(inference("req-1", node_a))
    with pytest.raises(LedgerError, match="fees exceed"):
        state.apply(book.fees(client.key_id, payment, [node_a.key_id], "req-1")[0])
    assert book.fees(None, payment, [node_a.key_id], "req-1") == []  # an unsigned request


def test_a_free_coordinator_charges_nothing(coordinator: Coordinator) -> None:
    _, app, _ = coordinator
    book: LedgerBook = app.state.coordinator.ledger
    book.check_payment(None, None, "req-1", jobs=3)
    client = generate_key()
    payment = LedgerRequest.signed(client, "payment", 4, request="req-1")
    assert book.fees(client.key_id, payment, ["some-node"], "req-1") == []


# -- tensors ----------------------------------------------------------------------------------


def test_tensors_are_stored_by_digest_apart_from_the_hubs_blobs(
    tmp_path: Path, coordinator: Coordinator
) -> None:
    url, app, _ = coordinator
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    store: TensorStore = app.state.coordinator.tensors
    digests = store.put({"x": x})
    assert digests == {"x": tensor_digest(x)}
    data = store.get_bytes(digests["x"])
    assert Digest.of(data) == digests["x"]
    assert data == canonical_tensor_bytes(x)
    np.testing.assert_array_equal(tensor_from_canonical(data), x)
    # GET /v1/blobs serves any hub blob by digest: a request's stored input is not one of
    # them (it is read, by whoever may, through its inference: docs/privacy.md).
    assert httpx.get(url + f"/v1/blobs/{digests['x'].to_text()}").status_code == 404
    assert httpx.get(url + f"/v1/tensors/{digests['x'].to_text()}").status_code == 404
    # A blob that is not a tensor (a model file, say) is not one.
    other = BlobStore(str(tmp_path / "home" / "coordinator" / "blobs")).put_bytes(b"weights")
    with pytest.raises(NotFoundError):
        store.get_bytes(other)
