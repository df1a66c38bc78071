"""The ledger's entry types (docs/ledger.md, "Entries"): logged bytes round-trip, every entry
has exactly its documented members, and an entry that moves money carries its account's signed
request for exactly that move, checked when the entry is built and when it is parsed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _ledger import (
    ACME,
    ACME_NODE,
    ADMIN,
    ALICE,
    BOB,
    BOLT_NODE,
    RULES,
    WATCHER,
    beacon,
    challenge,
    deposit,
    epoch_key,
    fee,
    namespace,
    payment,
    receipt,
    receipt_digest,
    stake,
    t,
    unstake,
)
from veriml.core import Digest, Envelope
from veriml.core.canonical import canonicalize
from veriml.core.dsse import Signature
from veriml.core.errors import FormatError
from veriml.core.keys import SigningKey
from veriml.core.timestamps import format_time
from veriml.ledger import (
    BeaconEntry,
    BondMap,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    FeeEntry,
    LedgerEntry,
    NamespaceEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    StateEntry,
    UnstakeEntry,
    parse_entry,
)
from veriml.protocol.accounts import LedgerRequest, OperatorBinding
from veriml.protocol.draw import beacon_commitment

AT = t(0)
LATER = t(3600)
ROOT = "sha256:" + "ab" * 32
A, B = ALICE.key_id, BOB.key_id


def signed(key: SigningKey, op: str, amount: int, **members: str) -> Envelope:
    return LedgerRequest.signed(key, op, amount, issued_at=AT, **members)


def _entries() -> list[LedgerEntry]:
    return [
        deposit(ALICE, 100, memo="faucet"),
        deposit(ALICE, 0),
        stake(ALICE, 40),
        unstake(ALICE, 10),
        fee(ALICE, ACME_NODE, 3),
        challenge("d-1", ACME_NODE, WATCHER, bond=5),
        challenge("d-2", ACME_NODE, ACME_NODE.key_id, node=ACME_NODE),  # a node, no bond
        dataclasses.replace(challenge("d-3", ACME_NODE, WATCHER, bond=5), deadline_seconds=0.25),
        DisputeVerdictEntry("d-1", "defendant", "no-difference", AT),
        DisputeVerdictEntry(
            "d-1",
            "challenger",
            "referee",
            AT,
            node_index=12,
            op_type="MatMul",
            inputs={"x": Digest.of(b"x"), "w": Digest.of(b"w")},
            claims={"defendant": Digest.of(b"1"), "challenger": Digest.of(b"2")},
            referee={"y": Digest.of(b"2")},
            rounds=5,
            messages=10,
        ),
        SlashEntry(ACME.key_id, 20, 10, "d-1", AT),
        RewardEntry(A, 10, "challenge", AT, dispute="d-1"),
        ReputationEntry(ACME_NODE.key_id, -100, "dispute-lost", AT, dispute="d-1"),
        ReputationEntry(ACME_NODE.key_id, 1, "manual", AT),
        StateEntry(RULES, BondMap.of({}).root(), 0, AT),
        StateEntry(RULES, BondMap.of({A: 5, B: 7}).root(), 2, AT),
        beacon(0),
        beacon(1),
        namespace("acme", ACME),
    ]


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: type(e).__name__)
def test_every_ledger_entry_round_trips_through_its_logged_bytes(entry: LedgerEntry) -> None:
    data = entry.to_bytes()
    parsed = parse_entry(data)
    assert parsed == entry
    assert parsed.to_bytes() == data
    assert data == canonicalize(json.loads(data))


MEMBERS: dict[type, tuple[set[str], set[str]]] = {
    # type: (required, optional) members beyond "type" (docs/ledger.md, "Entries")
    DepositEntry: ({"account", "amount", "memo", "at", "authorization"}, set()),
    StakeEntry: ({"account", "amount", "at", "authorization"}, set()),
    UnstakeEntry: ({"account", "amount", "available_at", "at", "authorization"}, set()),
    FeeEntry: ({"payer", "payee", "amount", "inference", "at", "authorization"}, set()),
    ChallengeEntry: (
        {"dispute", "inference", "defendant", "challenger", "mode", "bond"}
        | {"deadline_seconds", "at"},
        {"authorization"},
    ),
    DisputeVerdictEntry: (
        {"dispute", "winner", "reason", "node_index", "op_type", "inputs", "claims"}
        | {"referee", "rounds", "messages", "at"},
        set(),
    ),
    SlashEntry: ({"account", "amount", "burned", "dispute", "at"}, set()),
    RewardEntry: ({"account", "amount", "reason", "at"}, {"dispute"}),
    ReputationEntry: ({"account", "delta", "reason", "at"}, {"dispute"}),
    StateEntry: ({"rules", "bonds", "at"}, set()),
    BeaconEntry: ({"epoch", "commitment", "at"}, {"reveal"}),
    NamespaceEntry: ({"namespace", "owner", "owner_key", "model", "at"}, set()),
}


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: type(e).__name__)
def test_every_ledger_entry_has_exactly_its_documented_members(entry: LedgerEntry) -> None:
    required, optional = MEMBERS[type(entry)]
    obj = entry.to_json()
    assert required <= set(obj) - {"type"} <= required | optional
    for member in sorted(required):
        with pytest.raises(FormatError):
            parse_entry(canonicalize({k: v for k, v in obj.items() if k != member}))
    with pytest.raises(FormatError, match="unknown members"):
        parse_entry(canonicalize(obj | {"extra": 1}))
    for member in sorted(optional):
        with pytest.raises(FormatError, match="never null"):
            parse_entry(canonicalize(obj | {member: None}))


def test_a_verdict_entry_is_logged_with_type_verdict_and_null_operator() -> None:
    data = json.loads(DisputeVerdictEntry("d", "none", "referee", AT).to_bytes())
    assert (data["type"], data["node_index"], data["op_type"]) == ("verdict", None, None)


def test_absent_optional_members_are_omitted_not_null() -> None:
    reward = json.loads(RewardEntry("a", 1, "x", AT).to_bytes())
    assert "dispute" not in reward
    assert "reveal" not in json.loads(beacon(0).to_bytes())
    unsigned = challenge("d", ACME_NODE, "an-account")
    assert "authorization" not in unsigned.to_json()


def test_challenge_parties_accept_digests_and_are_kept_as_json() -> None:
    entry = challenge("d", ACME_NODE, WATCHER, bond=5)
    signed = receipt(ACME_NODE, "req-1")
    assert entry.defendant["receipt"] == receipt_digest(signed).to_text()
    assert entry.defendant["statement"] == signed.to_json()  # the node's receipt itself
    assert entry.challenger["trace"] == {"root": Digest.of(b"a trace").to_text(), "size": 3}
    assert (entry.defendant_node, entry.challenger_account) == (ACME_NODE.key_id, WATCHER.key_id)


def test_a_challenge_claim_is_the_receipt_and_the_claimed_outputs() -> None:
    one = challenge("d-1", ACME_NODE, WATCHER, bond=5, outputs={"y": Digest.of(b"1")})
    same = challenge("d-2", ACME_NODE, "someone-else", outputs={"y": Digest.of(b"1")})
    other = challenge("d-3", ACME_NODE, WATCHER, bond=5, outputs={"y": Digest.of(b"2")})
    assert one.claim == same.claim != other.claim
    # Who signed in does not change the claim: another challenger, a node's own statement.
    by_a_node = challenge(
        "d-5", ACME_NODE, BOLT_NODE.key_id, node=BOLT_NODE, outputs={"y": Digest.of(b"1")}
    )
    assert by_a_node.claim == one.claim
    another = receipt(ACME_NODE, "req-1", outputs={"y": Digest.of(b"another answer")})
    moved = challenge(
        "d-4", ACME_NODE, WATCHER, bond=5, outputs={"y": Digest.of(b"1")}, statement=another
    )
    assert moved.claim != one.claim


# -- authorization: the account's signed request, for exactly this move -------------------------

REQUEST_1 = "req-1"


def _deposit(authorization: Envelope) -> DepositEntry:
    return DepositEntry(A, 10, AT, "m", authorization)


def _challenge(authorization: Envelope | None, bond: int = 10) -> ChallengeEntry:
    entry = challenge("d", ACME_NODE, WATCHER.key_id, bond=0)
    return dataclasses.replace(entry, bond=bond, authorization=authorization)


def _watcher(op: str = "challenge", amount: int = 10, **changes: str) -> Envelope:
    members = {"inference": REQUEST_1, "node": ACME_NODE.key_id} | changes
    return signed(WATCHER, op, amount, **members)


MISMATCHES: list[Any] = [
    pytest.param(lambda: _deposit(signed(ADMIN, "deposit", 10, to=B, memo="m")), id="deposit-to"),
    pytest.param(lambda: _deposit(signed(ADMIN, "deposit", 11, to=A, memo="m")), id="deposit-amt"),
    pytest.param(lambda: _deposit(signed(ADMIN, "deposit", 10, to=A, memo="")), id="deposit-memo"),
    pytest.param(lambda: _deposit(signed(ADMIN, "stake", 10)), id="deposit-op"),
    pytest.param(lambda: StakeEntry(A, 10, AT, signed(BOB, "stake", 10)), id="stake-account"),
    pytest.param(lambda: StakeEntry(A, 10, AT, signed(ALICE, "stake", 11)), id="stake-amount"),
    pytest.param(lambda: StakeEntry(A, 10, AT, signed(ALICE, "unstake", 10)), id="stake-op"),
    pytest.param(
        lambda: UnstakeEntry(A, 10, AT, LATER, signed(BOB, "unstake", 10)), id="unstake-account"
    ),
    pytest.param(
        lambda: UnstakeEntry(A, 10, AT, LATER, signed(ALICE, "unstake", 9)), id="unstake-amount"
    ),
    pytest.param(
        lambda: UnstakeEntry(A, 10, AT, LATER, signed(ALICE, "stake", 10)), id="unstake-op"
    ),
    pytest.param(
        lambda: FeeEntry(A, "n", 1, REQUEST_1, AT, payment(BOB, REQUEST_1, 5)), id="fee-payer"
    ),
    pytest.param(
        lambda: FeeEntry(A, "n", 1, REQUEST_1, AT, payment(ALICE, "req-2", 5)), id="fee-request"
    ),
    pytest.param(
        lambda: FeeEntry(A, "n", 1, REQUEST_1, AT, signed(ALICE, "stake", 5)), id="fee-op"
    ),
    pytest.param(lambda: _challenge(_watcher(amount=9)), id="challenge-bond"),
    pytest.param(lambda: _challenge(_watcher(inference="req-2")), id="challenge-inference"),
    pytest.param(lambda: _challenge(_watcher(node="another-node")), id="challenge-node"),
    pytest.param(
        lambda: _challenge(
            signed(ALICE, "challenge", 10, inference=REQUEST_1, node=ACME_NODE.key_id)
        ),
        id="challenge-account",
    ),
    pytest.param(lambda: _challenge(signed(WATCHER, "stake", 10)), id="challenge-op"),
]


@pytest.mark.parametrize("build", MISMATCHES)
def test_an_authorization_for_another_move_is_refused_when_built(build: Callable[[], Any]) -> None:
    with pytest.raises(FormatError, match="authorization is for another"):
        build()


def _swap(entry: LedgerEntry, **changes: Any) -> bytes:
    return canonicalize(entry.to_json() | changes)


PARSED_MISMATCHES: list[Any] = [
    pytest.param(lambda: _swap(deposit(ALICE, 10), account=B), id="deposit-account"),
    pytest.param(lambda: _swap(deposit(ALICE, 10), amount=11), id="deposit-amount"),
    pytest.param(lambda: _swap(deposit(ALICE, 10), memo="x"), id="deposit-memo"),
    pytest.param(lambda: _swap(stake(ALICE, 10), account=B), id="stake-account"),
    pytest.param(lambda: _swap(stake(ALICE, 10), amount=0), id="stake-amount"),
    pytest.param(lambda: _swap(unstake(ALICE, 10), amount=20), id="unstake-amount"),
    pytest.param(
        lambda: _swap(
            stake(ALICE, 10), authorization=unstake(ALICE, 10).to_json()["authorization"]
        ),
        id="stake-with-an-unstake-request",
    ),
    pytest.param(lambda: _swap(fee(ALICE, "n", 1), payer=B), id="fee-payer"),
    pytest.param(lambda: _swap(fee(ALICE, "n", 1), inference="req-2"), id="fee-inference"),
    pytest.param(
        lambda: _swap(challenge("d", ACME_NODE, WATCHER, bond=5), bond=6), id="challenge-bond"
    ),
    pytest.param(
        lambda: _swap(challenge("d", ACME_NODE, WATCHER, bond=5), inference="req-2"),
        id="challenge-inference",
    ),
    pytest.param(
        lambda: _swap(
            challenge("d", ACME_NODE, WATCHER, bond=5),
            defendant=challenge("d", BOB, WATCHER, bond=5).defendant,
        ),
        id="challenge-defendant",
    ),
    pytest.param(
        lambda: _swap(
            challenge("d", ACME_NODE, WATCHER, bond=5),
            challenger=challenge("d", ACME_NODE, ALICE, bond=5).challenger,
        ),
        id="challenge-challenger",
    ),
]


@pytest.mark.parametrize("logged", PARSED_MISMATCHES)
def test_an_authorization_for_another_move_is_refused_when_parsed(
    logged: Callable[[], bytes],
) -> None:
    with pytest.raises(FormatError, match="authorization is for another"):
        parse_entry(logged())


def test_a_money_entry_without_its_signed_request_cannot_be_built_or_parsed() -> None:
    with pytest.raises(FormatError, match="carries its account's signed request"):
        StakeEntry(A, 10, AT)
    with pytest.raises(FormatError, match="carries its account's signed request"):
        DepositEntry(A, 10, AT)
    with pytest.raises(FormatError, match="carries its account's signed request"):
        _challenge(None, bond=1)  # a bond is the challenger's money
    obj = stake(ALICE, 10).to_json()
    with pytest.raises(FormatError):
        parse_entry(canonicalize({k: v for k, v in obj.items() if k != "authorization"}))
    with pytest.raises(FormatError):
        parse_entry(canonicalize(obj | {"authorization": "signed, trust me"}))
    # No bond: the entry builds (nothing of the challenger's moves), but the fold still wants
    # the challenger's signature (test_state: an account challenger signs even at bond 0).
    assert _challenge(None, bond=0).authorization is None


def test_an_authorization_whose_signature_does_not_verify_is_refused() -> None:
    genuine = stake(ALICE, 10).authorization
    assert genuine is not None
    by_bob = Envelope(
        genuine.payload_type,
        genuine.payload,
        (Signature(A, BOB.sign(genuine.payload)),),
    )
    with pytest.raises(FormatError, match="does not verify"):
        StakeEntry(A, 10, AT, by_bob)
    with pytest.raises(FormatError, match="does not verify"):
        parse_entry(_swap(stake(ALICE, 10), authorization=by_bob.to_json()))
    # Another signed message of the account is not a ledger request.
    binding = OperatorBinding.of(ALICE, ACME_NODE.key_id, issued_at=AT).sign(ALICE)
    with pytest.raises(FormatError, match="does not verify"):
        StakeEntry(A, 10, AT, binding)


def test_a_deposit_names_its_signer_only_in_the_request() -> None:
    # Anyone can sign a deposit request; only the fold knows the admin (docs/ledger.md).
    entry = deposit(ALICE, 10, by=BOB)
    assert entry.request.account == B
    assert parse_entry(entry.to_bytes()) == entry


# -- member rules ----------------------------------------------------------------------------


def _mutated(entry: LedgerEntry, **changes: Any) -> bytes:
    return canonicalize(entry.to_json() | changes)


SLASH = SlashEntry("a", 5, 5, "d", AT)
VERDICT = DisputeVerdictEntry("d", "challenger", "referee", AT)
CHALLENGE = challenge("d", ACME_NODE, WATCHER, bond=5)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_mutated(SLASH, amount=True), id="amount-bool"),
        pytest.param(_mutated(SLASH, amount=5.5), id="amount-float"),
        pytest.param(_mutated(SLASH, amount="5"), id="amount-string"),
        pytest.param(_mutated(SLASH, amount=-1), id="amount-negative"),
        pytest.param(_mutated(SLASH, account=""), id="account-empty"),
        pytest.param(_mutated(SLASH, account="a" * 257), id="account-257"),
        pytest.param(_mutated(SLASH, account=7), id="account-int"),
        pytest.param(_mutated(deposit(ALICE, 1), memo="m" * 257), id="memo-257"),
        pytest.param(_mutated(SLASH, at="2026-11-26T10:00:00Z"), id="at-not-canonical"),
        pytest.param(_mutated(SLASH, at="2026-11-26T10:00:00.000000+01:00"), id="at-offset"),
        pytest.param(_mutated(SLASH, at="yesterday"), id="at-garbage"),
        pytest.param(_mutated(unstake(ALICE, 1), available_at=t(-1)), id="unbonding-before-at"),
        pytest.param(_mutated(SLASH, burned=6), id="slash-burns-more"),
        pytest.param(_mutated(VERDICT, winner="both"), id="verdict-winner"),
        pytest.param(_mutated(VERDICT, reason="because"), id="verdict-reason"),
        pytest.param(_mutated(VERDICT, claims={"referee": ROOT}), id="verdict-claim-party"),
        pytest.param(_mutated(VERDICT, inputs={"x": "md5:00"}), id="verdict-input-digest"),
        pytest.param(_mutated(VERDICT, node_index=-1), id="verdict-node-index"),
        pytest.param(_mutated(CHALLENGE, mode="fuzzy"), id="challenge-mode"),
        pytest.param(_mutated(CHALLENGE, deadline_seconds=0), id="challenge-deadline-0"),
        pytest.param(_mutated(CHALLENGE, deadline_seconds=True), id="challenge-deadline-bool"),
        pytest.param(
            _mutated(CHALLENGE, defendant={"node": "n", "trace": {"root": ROOT, "size": 1}}),
            id="challenge-defendant-no-receipt",
        ),
        pytest.param(
            _mutated(
                CHALLENGE, challenger={"account": "w", "trace": {"root": ROOT}, "outputs": {}}
            ),
            id="challenge-trace-no-size",
        ),
        pytest.param(
            b'{"account":"a","amount":9007199254740992,"at":"'
            + AT.encode()
            + b'","burned":0,"dispute":"d","type":"slash"}',
            id="amount-2^53-raw",
        ),
        pytest.param(_mutated(RewardEntry("a", 1, "r", AT), reason=""), id="reward-reason-empty"),
    ],
)
def test_malformed_ledger_entries_are_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        parse_entry(data)


def test_entries_check_their_members_when_built_too() -> None:
    with pytest.raises(FormatError, match="amount"):
        SlashEntry("a", -1, 0, "d", AT)
    with pytest.raises(FormatError, match="winner"):
        DisputeVerdictEntry("d", "nobody", "referee", AT)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="available_at"):
        UnstakeEntry(A, 1, LATER, AT, unstake(ALICE, 1).authorization)


@given(st.integers())
def test_amounts_are_accepted_exactly_in_0_to_2_pow_53(amount: int) -> None:
    # 2**53: the integers RFC 8785 writes exactly (beyond, an entry has no canonical bytes).
    if not 0 <= amount < 2**53:
        with pytest.raises(FormatError):
            SlashEntry("a", amount, 0, "d", AT)
        if abs(amount) < 2**53:
            with pytest.raises(FormatError):
                parse_entry(_mutated(SLASH, amount=amount, burned=0))
        return
    parsed = parse_entry(_mutated(SLASH, amount=amount, burned=0))
    assert parsed == SlashEntry("a", amount, 0, "d", AT)


@given(st.integers(min_value=-(2**60), max_value=2**60))
def test_reputation_deltas_are_signed_and_bounded(delta: int) -> None:
    if abs(delta) < 2**53:
        data = _mutated(ReputationEntry("a", 0, "r", AT), delta=delta)
        assert parse_entry(data) == ReputationEntry("a", delta, "r", AT)
    else:
        with pytest.raises(FormatError):
            ReputationEntry("a", delta, "r", AT)


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 1),
        max_value=dt.datetime(9999, 12, 31),
        timezones=st.just(dt.UTC),
    )
)
def test_every_instant_has_exactly_one_accepted_spelling(when: dt.datetime) -> None:
    text = format_time(when)
    assert parse_entry(_mutated(SLASH, at=text)) == SlashEntry("a", 5, 5, "d", text)
    for other in (when.isoformat(), text.replace(".", ","), text[:-8] + "Z"):
        if other != text:
            with pytest.raises(FormatError):
                parse_entry(_mutated(SLASH, at=other))


@given(st.text(max_size=300))
def test_account_ids_are_1_to_256_characters(account: str) -> None:
    data = _mutated(SLASH, account=account)
    if 0 < len(account) <= 256:
        assert parse_entry(data) == SlashEntry(account, 5, 5, "d", AT)
    else:
        with pytest.raises(FormatError):
            parse_entry(data)


# -- the new entries: state, beacon, namespace ------------------------------------------------


def test_a_state_entry_logs_the_rules_and_the_bond_maps_root_and_size() -> None:
    bonds = BondMap.of({A: 5, B: 7, "idle": 0})
    entry = StateEntry(RULES, bonds.root(), bonds.size, AT)
    assert entry.to_json() == {
        "type": "state",
        "rules": RULES.to_json(),
        "bonds": {"root": bonds.root().to_text(), "size": 2},
        "at": AT,
    }
    obj = entry.to_json()
    for bad in ({"root": ROOT}, {"root": ROOT, "size": 2, "x": 1}, [ROOT, 2]):
        with pytest.raises(FormatError):
            parse_entry(canonicalize(obj | {"bonds": bad}))
    with pytest.raises(FormatError, match="rules"):
        parse_entry(canonicalize(obj | {"rules": RULES.to_json() | {"extra": 1}}))
    with pytest.raises(FormatError):
        parse_entry(canonicalize(obj | {"bonds": {"root": "md5:00", "size": 2}}))


def test_a_beacon_entry_commits_to_its_key_and_reveals_an_earlier_one_in_lowercase_hex() -> None:
    entry = beacon(3)
    assert entry.commitment == beacon_commitment(epoch_key(3))
    assert json.loads(entry.to_bytes())["reveal"] == epoch_key(1).hex()
    obj = entry.to_json()
    for bad in (epoch_key(1).hex().upper(), epoch_key(1).hex()[:62], "zz" * 32, 7):
        with pytest.raises(FormatError, match="reveal"):
            parse_entry(canonicalize(obj | {"reveal": bad}))
    with pytest.raises(FormatError, match="32-byte"):
        BeaconEntry(3, beacon_commitment(epoch_key(3)), AT, b"short")
    with pytest.raises(FormatError):
        parse_entry(canonicalize(obj | {"epoch": -1}))


def test_a_namespace_entry_names_its_owner_by_the_owners_key() -> None:
    entry = namespace("acme", ACME)
    assert entry.owner == ACME.key_id
    assert json.loads(entry.to_bytes())["owner"] == ACME.key_id
    with pytest.raises(FormatError, match="owner is not its key's id"):
        parse_entry(_mutated(entry, owner=BOB.key_id))
    for bad in ("acme/iris", " acme", ""):
        with pytest.raises(FormatError):
            NamespaceEntry(bad, entry.owner_key, entry.model, AT)
    with pytest.raises(FormatError):
        parse_entry(_mutated(entry, owner_key="not a key"))


# -- any member, any value ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_entries()), st.data())
def test_any_member_replaced_by_any_json_parses_or_is_a_format_error(
    entry: LedgerEntry, data: st.DataObject
) -> None:
    obj = entry.to_json()
    member = data.draw(st.sampled_from(sorted(set(obj) - {"type"})))
    obj[member] = data.draw(json_values)
    try:
        raw = canonicalize(obj)
    except FormatError:
        return  # a float or integer RFC 8785 cannot write: no such logged bytes exist
    try:
        parsed = parse_entry(raw)
    except FormatError:
        return
    assert parsed.to_bytes() == raw  # one spelling: what parses is written back byte for byte
