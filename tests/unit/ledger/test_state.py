"""The ledger fold: the rules of docs/ledger.md, entry by entry, and its refusals."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from veriml.core import Digest, Envelope, generate_key
from veriml.core.errors import FormatError
from veriml.core.timestamps import format_time
from veriml.ledger import (
    Account,
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    Entry,
    FeeEntry,
    InferenceEntry,
    LedgerError,
    LedgerState,
    ModelEntry,
    NodeEntry,
    OpenDispute,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
    fold,
)
from veriml.protocol import NodeDescriptor
from veriml.verify.policy import Verdict

BASE = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
ROOT = Digest.of(b"root")


def t(seconds: int) -> str:
    return format_time(BASE + dt.timedelta(seconds=seconds))


def challenge(
    dispute: str, challenger: str, bond: int, at: int = 0, node: str = "node"
) -> ChallengeEntry:
    return ChallengeEntry(
        dispute=dispute,
        inference="req-1",
        defendant={"node": node, "receipt": Digest.of(b"r"), "trace": {"root": ROOT, "size": 3}},
        challenger={"account": challenger, "trace": {"root": ROOT, "size": 3}, "outputs": {}},
        mode="bitwise",
        bond=bond,
        deadline_seconds=60,
        at=t(at),
    )


def folded(*entries: Entry) -> LedgerState:
    return fold(entries)


def refuses(state: LedgerState, entry: Entry, match: str) -> LedgerError:
    """Apply ``entry`` expecting a refusal; the state must not change at all."""
    before, size = state.digest(), state.size
    with pytest.raises(LedgerError, match=match) as info:
        state.check(entry)
    with pytest.raises(LedgerError, match=match):
        state.apply(entry)
    assert state.digest() == before
    assert state.size == size
    return info.value


def test_deposits_mint_into_the_balance_and_the_state_has_the_documented_shape() -> None:
    state = folded(DepositEntry("alice", 70, t(0)), DepositEntry("alice", 30, t(5), memo="again"))
    assert state.to_json() == {
        "format": "veriml-ledger/v1",
        "size": 2,
        "at": t(5),
        "accounts": {
            "alice": {
                "balance": 100,
                "stake": 0,
                "unbonding": [],
                "reputation": 0,
                "jobs": 0,
                "slashes": 0,
                "slashed": 0,
            }
        },
        "disputes": {},
        "totals": {"minted": 100, "burned": 0, "staked": 0, "fees": 0, "rewards": 0, "slashed": 0},
    }


def test_stake_moves_balance_into_stake_and_cannot_exceed_it() -> None:
    state = folded(DepositEntry("n", 100, t(0)), StakeEntry("n", 60, t(1)))
    assert (state.account("n").balance, state.stake_of("n"), state.totals.staked) == (40, 60, 60)
    error = refuses(state, StakeEntry("n", 41, t(2)), "stake exceeds the balance")
    assert error.evidence["balance"] == 40


def test_unbonding_returns_to_the_balance_at_the_first_entry_at_or_after_its_time() -> None:
    state = folded(
        DepositEntry("n", 100, t(0)),
        StakeEntry("n", 100, t(1)),
        UnstakeEntry("n", 30, t(2), t(100)),
    )
    assert state.account("n").unbonding[0].amount == 30
    assert state.totals.staked == 100  # unbonding is still at stake
    state.apply(DepositEntry("other", 0, t(99)))
    assert state.account("n").balance == 0
    # The release happens before the entry at t(100) applies: it can stake the released 30.
    state.apply(StakeEntry("n", 30, t(100)))
    account = state.account("n")
    assert (account.balance, account.stake, account.unbonding) == (0, 100, [])


def test_an_unstake_due_at_once_is_released_by_the_next_entry_not_by_itself() -> None:
    state = folded(
        DepositEntry("n", 5, t(0)), StakeEntry("n", 5, t(0)), UnstakeEntry("n", 5, t(0), t(0))
    )
    assert state.account("n").balance == 0
    state.apply(DepositEntry("x", 0, t(0)))
    assert state.account("n").balance == 5
    assert state.totals.staked == 0


def test_untimed_entries_release_nothing_and_an_earlier_time_keeps_the_clock() -> None:
    key = generate_key()
    state = folded(
        DepositEntry("n", 5, t(0)),
        StakeEntry("n", 5, t(0)),
        UnstakeEntry("n", 5, t(0), t(10)),
        DepositEntry("x", 0, t(20)),
    )
    assert state.account("n").balance == 5
    state.apply(DepositEntry("n", 5, t(30)))
    state.apply(StakeEntry("n", 10, t(30)))
    state.apply(UnstakeEntry("n", 10, t(30), t(40)))
    state.apply(_inference(key.key_id, "accepted"))
    assert state.account("n").unbonding[0].amount == 10
    state.apply(DepositEntry("x", 0, t(5)))  # an older time: the clock stays at t(30)
    assert state.at == t(30)
    assert state.account("n").balance == 0


def test_a_refused_entry_does_not_release_what_was_due() -> None:
    state = folded(
        DepositEntry("n", 10, t(0)), StakeEntry("n", 10, t(0)), UnstakeEntry("n", 10, t(0), t(5))
    )
    refuses(state, FeeEntry("n", "m", 11, "req", t(5)), "fee exceeds")
    assert state.account("n").unbonding[0].amount == 10
    assert state.at == t(0)
    state.apply(FeeEntry("n", "m", 10, "req", t(5)))
    assert (state.account("n").balance, state.account("m").balance) == (0, 10)


def test_fees_move_balance_and_an_overdraft_names_the_entry_index() -> None:
    state = folded(DepositEntry("client", 10, t(0)), FeeEntry("client", "node", 4, "req-1", t(1)))
    assert (state.account("client").balance, state.account("node").balance) == (6, 4)
    assert state.totals.fees == 4
    error = refuses(state, FeeEntry("client", "node", 7, "req-2", t(2)), "fee exceeds")
    assert error.index == 2
    assert error.evidence["index"] == 2
    assert error.evidence["type"] == "fee"
    assert isinstance(error, FormatError)
    with pytest.raises(LedgerError) as info:
        state.apply(FeeEntry("client", "node", 7, "req-2", t(2)), 41)
    assert info.value.index == 41


@pytest.mark.parametrize(
    ("winner", "challenger_balance", "burned"),
    [("challenger", 10, 0), ("none", 10, 0), ("defendant", 7, 3), ("neither", 7, 3)],
)
def test_a_verdict_returns_the_bond_unless_the_challenger_lost(
    winner: Any, challenger_balance: int, burned: int
) -> None:
    state = folded(DepositEntry("watcher", 10, t(0)), challenge("d", "watcher", 3, at=1))
    assert state.account("watcher").balance == 7
    assert state.open_disputes == {"d": OpenDispute("req-1", "node", "watcher", 3, t(1))}
    assert state.to_json()["disputes"]["d"]["bond"] == 3
    assert "node" in state.to_json()["accounts"]  # the defendant appears in an entry
    state.apply(DisputeVerdictEntry("d", winner, "referee", t(2)))
    assert state.account("watcher").balance == challenger_balance
    assert state.totals.burned == burned
    assert dict(state.open_disputes) == {}


def test_disputes_open_once_close_once_and_a_bond_needs_the_balance() -> None:
    state = folded(DepositEntry("w", 10, t(0)))
    refuses(state, challenge("d", "w", 11), "bond exceeds")
    refuses(state, DisputeVerdictEntry("d", "defendant", "timeout", t(1)), "no such dispute")
    state.apply(challenge("d", "w", 1))
    refuses(state, challenge("d", "w", 1), "already opened")
    state.apply(DisputeVerdictEntry("d", "defendant", "timeout", t(1)))
    refuses(state, DisputeVerdictEntry("d", "defendant", "timeout", t(1)), "already decided")
    refuses(state, challenge("d", "w", 1), "already opened")


def test_a_slash_takes_stake_then_the_newest_unbonding_burns_part_and_holds_the_rest() -> None:
    state = folded(
        DepositEntry("n", 22, t(0)),
        StakeEntry("n", 22, t(0)),
        UnstakeEntry("n", 5, t(0), t(100)),
        UnstakeEntry("n", 7, t(0), t(200)),
        DepositEntry("w", 1, t(0)),
        challenge("d", "w", 1, node="n"),
        DisputeVerdictEntry("d", "challenger", "referee", t(1)),
        SlashEntry("n", 20, 8, "d", t(2)),
    )
    account = state.account("n")
    assert account.stake == 0
    assert [(u.amount, u.available_at) for u in account.unbonding] == [(2, t(100))]
    assert (account.slashes, account.slashed) == (1, 20)
    assert dict(state.held) == {"d": 12}
    assert (state.totals.burned, state.totals.slashed, state.totals.staked) == (8, 20, 2)
    refuses(state, SlashEntry("n", 3, 0, "d", t(3)), "slash exceeds")
    refuses(state, SlashEntry("n", 1, 0, "other", t(3)), "no such dispute")
    state.apply(RewardEntry("w", 12, "challenge", t(3), dispute="d"))
    assert state.account("w").balance == 13
    assert dict(state.held) == {}
    refuses(state, RewardEntry("w", 1, "challenge", t(3), dispute="d"), "held slash")
    # The slashed unbonding remainder is still released on time.
    state.apply(DepositEntry("x", 0, t(100)))
    assert state.account("n").balance == 2


def test_a_reward_without_a_dispute_is_minted() -> None:
    state = folded(RewardEntry("a", 5, "bootstrap", t(0)))
    assert state.account("a").balance == 5
    assert (state.totals.minted, state.totals.rewards) == (5, 5)


def _inference(node: str, outcome: Any, *agreeing: str) -> InferenceEntry:
    key = generate_key()
    return InferenceEntry(
        request_id="r",
        request_digest=Digest.of(b"r"),
        model=Digest.of(b"m"),
        policy="none",
        receipts=(Envelope.sign(b"{}", [key]),),
        verdict=Verdict("none", outcome, (node, *agreeing), {"y": Digest.of(b"y")}),
    )


def test_reputation_is_explicit_deltas_plus_accepted_jobs() -> None:
    state = folded(
        _inference("a", "accepted", "b", "a"),
        _inference("a", "accepted"),
        _inference("a", "rejected"),
        DepositEntry("w", 1, t(0)),
        challenge("d", "w", 0, node="a"),
        ReputationEntry("a", -100, "dispute-lost", t(1), dispute="d"),
        ReputationEntry("b", 3, "manual", t(1)),
    )
    assert (state.account("a").jobs, state.reputation_of("a")) == (2, -98)
    assert (state.account("b").jobs, state.reputation_of("b")) == (1, 4)
    refuses(state, ReputationEntry("a", 1, "x", t(2), dispute="nope"), "no such dispute")


def _descriptor() -> tuple[NodeDescriptor, Envelope]:
    key = generate_key()
    descriptor = NodeDescriptor(
        public_key=key.public.to_pem().decode(),
        operator="op",
        endpoint="http://127.0.0.1:1",
        issued_at=t(0),
        nonce="00",
    )
    return descriptor, descriptor.sign(key)


def _model() -> ModelEntry:
    return ModelEntry(
        digest=Digest.of(b"m"),
        files_digest=Digest.of(b"f"),
        name="iris",
        version="1.0.0",
        publisher_key_id="sha256:" + "11" * 32,
        publisher_key="-----BEGIN PUBLIC KEY-----\n...",
        signature=Digest.of(b"sig"),
        size=1,
        registered_at=t(0),
    )


def test_node_entries_open_the_nodes_account_and_model_entries_only_count() -> None:
    descriptor, envelope = _descriptor()
    state = folded(_model(), NodeEntry(envelope))
    assert state.size == 2
    assert state.to_json()["accounts"] == {descriptor.node_id: Account().to_json()}
    assert state.at is None


def test_a_node_entry_whose_signature_fails_is_refused() -> None:
    _, envelope = _descriptor()
    payload = envelope.payload.replace(b"127.0.0.1:1", b"127.0.0.1:2")
    forged = Envelope(envelope.payload_type, payload, envelope.signatures)
    state = LedgerState()
    refuses(state, NodeEntry(forged), "does not verify")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"type": "bonus", "account": "a"}', "does not parse"),
        (b"not json", "does not parse"),
        (
            b'{"type": "deposit", "account": "a", "amount": -1, "memo": "", "at": "x"}',
            "does not parse",
        ),
    ],
)
def test_bytes_that_are_not_a_ledger_entry_are_ledger_errors(data: bytes, match: str) -> None:
    state = folded(DepositEntry("a", 1, t(0)))
    error = refuses(state, data, match)  # type: ignore[arg-type]
    assert error.index == 1


def test_the_fold_accepts_logged_bytes_and_parsed_entries_alike() -> None:
    entries: list[Entry] = [
        DepositEntry("a", 9, t(0)),
        StakeEntry("a", 4, t(1)),
        FeeEntry("a", "b", 2, "req", t(2)),
    ]
    assert fold(e.to_bytes() for e in entries).digest() == fold(entries).digest()


def test_totals_that_would_leave_the_json_integer_range_are_refused() -> None:
    state = folded(DepositEntry("a", 2**53 - 1, t(0)))
    refuses(state, DepositEntry("b", 1, t(1)), "integer range")


def test_a_copy_is_independent() -> None:
    state = folded(
        DepositEntry("a", 10, t(0)), StakeEntry("a", 5, t(0)), UnstakeEntry("a", 5, t(0), t(9))
    )
    trial = state.copy()
    assert trial.digest() == state.digest()
    trial.apply(DepositEntry("a", 1, t(10)))
    assert state.account("a").balance == 5
    assert state.account("a").unbonding[0].amount == 5
    assert trial.account("a").balance == 11
    snapshot = state.account("a")
    snapshot.balance = 1000
    assert state.account("a").balance == 5
