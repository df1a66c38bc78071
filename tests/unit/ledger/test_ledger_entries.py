"""The ledger's entry types: logged bytes round-trip, and anything off-format is refused."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.canonical import canonicalize
from veriml.core.errors import FormatError
from veriml.core.timestamps import format_time
from veriml.ledger import (
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    FeeEntry,
    LedgerEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
    parse_entry,
)

AT = "2026-11-26T10:00:00.000000Z"
LATER = "2026-11-26T11:00:00.000000Z"
ROOT = "sha256:" + "ab" * 32


def _challenge(**changes: Any) -> ChallengeEntry:
    members: dict[str, Any] = {
        "dispute": "d-1",
        "inference": "req-1",
        "defendant": {
            "node": "sha256:" + "01" * 32,
            "receipt": Digest.of(b"r"),
            "trace": {"root": ROOT, "size": 7},
        },
        "challenger": {
            "account": "watcher",
            "trace": {"root": Digest.of(b"t"), "size": 7},
            "outputs": {"y": Digest.of(b"y")},
        },
        "mode": "bitwise",
        "bond": 5,
        "deadline_seconds": 60,
        "at": AT,
    }
    return ChallengeEntry(**(members | changes))


def _entries() -> list[LedgerEntry]:
    return [
        DepositEntry("alice", 100, AT, memo="faucet"),
        DepositEntry("alice", 0, AT),
        StakeEntry("node-a", 40, AT),
        UnstakeEntry("node-a", 10, AT, LATER),
        FeeEntry("client", "node-a", 3, "req-1", AT),
        _challenge(),
        _challenge(
            challenger={
                "account": "op",
                "node": "node-b",
                "trace": {"root": ROOT, "size": 1},
                "outputs": {},
            },
            mode="tolerance",
            deadline_seconds=0.25,
        ),
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
        SlashEntry("node-a", 20, 10, "d-1", AT),
        RewardEntry("watcher", 10, "dispute-won", AT, dispute="d-1"),
        RewardEntry("alice", 1, "bootstrap", AT),
        ReputationEntry("node-a", -100, "dispute-lost", AT, dispute="d-1"),
        ReputationEntry("node-a", 1, "manual", AT),
    ]


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: type(e).__name__)
def test_every_ledger_entry_round_trips_through_its_logged_bytes(entry: LedgerEntry) -> None:
    data = entry.to_bytes()
    parsed = parse_entry(data)
    assert parsed == entry
    assert parsed.to_bytes() == data
    assert data == canonicalize(json.loads(data))


def test_a_verdict_entry_is_logged_with_type_verdict() -> None:
    data = json.loads(DisputeVerdictEntry("d", "none", "referee", AT).to_bytes())
    assert data["type"] == "verdict"
    assert data["node_index"] is None


def test_absent_optional_members_are_omitted_not_null() -> None:
    reward = json.loads(RewardEntry("a", 1, "x", AT).to_bytes())
    assert "dispute" not in reward
    with pytest.raises(FormatError, match="never null"):
        parse_entry(canonicalize(reward | {"dispute": None}))


def test_challenge_parties_accept_digests_and_are_kept_as_json() -> None:
    entry = _challenge()
    assert entry.defendant["receipt"] == Digest.of(b"r").to_text()
    assert entry.challenger["trace"] == {"root": Digest.of(b"t").to_text(), "size": 7}
    assert entry.defendant_node == "sha256:" + "01" * 32
    assert entry.challenger_account == "watcher"


def _mutated(entry: LedgerEntry, **changes: Any) -> bytes:
    return canonicalize(entry.to_json() | changes)


DEPOSIT = DepositEntry("alice", 5, AT)
CHALLENGE = _challenge()
VERDICT = DisputeVerdictEntry("d", "challenger", "referee", AT)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_mutated(DEPOSIT, amount=True), id="amount-bool"),
        pytest.param(_mutated(DEPOSIT, amount=1.5), id="amount-float"),
        pytest.param(_mutated(DEPOSIT, amount="5"), id="amount-string"),
        pytest.param(_mutated(DEPOSIT, amount=-1), id="amount-negative"),
        pytest.param(_mutated(DEPOSIT, account=""), id="account-empty"),
        pytest.param(_mutated(DEPOSIT, account="a" * 257), id="account-257"),
        pytest.param(_mutated(DEPOSIT, account=7), id="account-int"),
        pytest.param(_mutated(DEPOSIT, memo="m" * 257), id="memo-257"),
        pytest.param(_mutated(DEPOSIT, at="2026-11-26T10:00:00Z"), id="at-not-canonical"),
        pytest.param(_mutated(DEPOSIT, at="2026-11-26T10:00:00.000000+01:00"), id="at-offset"),
        pytest.param(_mutated(DEPOSIT, at="yesterday"), id="at-garbage"),
        pytest.param(_mutated(DEPOSIT, extra=1), id="unknown-member"),
        pytest.param(
            canonicalize({"type": "deposit", "account": "a", "amount": 1, "at": AT}),
            id="missing-memo",
        ),
        pytest.param(
            _mutated(UnstakeEntry("a", 1, LATER, LATER), available_at=AT), id="unbonding-before-at"
        ),
        pytest.param(_mutated(SlashEntry("a", 5, 5, "d", AT), burned=6), id="slash-burns-more"),
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
            _mutated(
                CHALLENGE,
                challenger={
                    "account": "w",
                    "trace": {"root": ROOT, "size": 1},
                    "outputs": {},
                    "x": 1,
                },
            ),
            id="challenge-challenger-unknown-member",
        ),
        pytest.param(
            b'{"account":"a","amount":9007199254740992,"at":"'
            + AT.encode()
            + b'","memo":"","type":"deposit"}',
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
        StakeEntry("a", -1, AT)
    with pytest.raises(FormatError, match="winner"):
        DisputeVerdictEntry("d", "nobody", "referee", AT)  # type: ignore[arg-type]


@given(st.integers())
def test_amounts_are_accepted_exactly_in_0_to_2_pow_53(amount: int) -> None:
    # 2**53: the integers RFC 8785 writes exactly (beyond, an entry has no canonical bytes).
    if not -(2**53) < amount < 2**53:
        with pytest.raises(FormatError):
            DepositEntry("alice", amount, AT)
        return
    data = _mutated(DEPOSIT, amount=amount)
    if amount >= 0:
        parsed = parse_entry(data)
        assert isinstance(parsed, DepositEntry)
        assert parsed.amount == amount
    else:
        with pytest.raises(FormatError):
            parse_entry(data)


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
    assert parse_entry(_mutated(DEPOSIT, at=text)) == DepositEntry("alice", 5, text)
    for other in (when.isoformat(), text.replace(".", ","), text[:-8] + "Z"):
        if other != text:
            with pytest.raises(FormatError):
                parse_entry(_mutated(DEPOSIT, at=other))


@given(st.text(max_size=300))
def test_account_ids_are_1_to_256_characters(account: str) -> None:
    data = _mutated(DEPOSIT, account=account)
    if 0 < len(account) <= 256:
        assert parse_entry(data) == DepositEntry(account, 5, AT)
    else:
        with pytest.raises(FormatError):
            parse_entry(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


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
