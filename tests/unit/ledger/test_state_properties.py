"""Invariants of the ledger fold over random entry sequences (Hypothesis).

The sequences mix valid and invalid entries on purpose: a refused entry must leave the state
exactly as it was, and whatever is accepted must conserve money.
"""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.timestamps import format_time
from veriml.ledger import (
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    FeeEntry,
    LedgerEntry,
    LedgerError,
    LedgerState,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    UnstakeEntry,
    fold,
)

BASE = dt.datetime(2026, 11, 26, 10, tzinfo=dt.UTC)
ROOT = Digest.of(b"root")

accounts = st.sampled_from(["a", "b", "node"])
disputes = st.sampled_from(["d1", "d2", "d3"])
amounts = st.integers(min_value=0, max_value=20)
deposits = st.integers(min_value=0, max_value=100)
times = st.integers(min_value=0, max_value=300).map(
    lambda s: format_time(BASE + dt.timedelta(seconds=s))
)


@st.composite
def unstakes(draw: st.DrawFn) -> UnstakeEntry:
    at = draw(st.integers(min_value=0, max_value=300))
    delay = draw(st.integers(min_value=0, max_value=100))
    return UnstakeEntry(
        draw(accounts),
        draw(amounts),
        format_time(BASE + dt.timedelta(seconds=at)),
        format_time(BASE + dt.timedelta(seconds=at + delay)),
    )


@st.composite
def challenges(draw: st.DrawFn) -> ChallengeEntry:
    trace = {"root": ROOT, "size": 3}
    return ChallengeEntry(
        dispute=draw(disputes),
        inference="req",
        defendant={"node": draw(accounts), "receipt": ROOT, "trace": trace},
        challenger={"account": draw(accounts), "trace": trace, "outputs": {}},
        mode="bitwise",
        bond=draw(st.integers(min_value=0, max_value=10)),
        deadline_seconds=60,
        at=draw(times),
    )


@st.composite
def slashes(draw: st.DrawFn) -> SlashEntry:
    amount = draw(amounts)
    burned = draw(st.integers(min_value=0, max_value=amount))
    return SlashEntry(draw(accounts), amount, burned, draw(disputes), draw(times))


entries = st.one_of(
    st.builds(DepositEntry, accounts, deposits, times),
    st.builds(StakeEntry, accounts, amounts, times),
    unstakes(),
    st.builds(FeeEntry, accounts, accounts, amounts, st.just("req"), times),
    challenges(),
    st.builds(
        DisputeVerdictEntry,
        disputes,
        st.sampled_from(["defendant", "challenger", "none", "neither"]),
        st.just("referee"),
        times,
    ),
    slashes(),
    st.builds(RewardEntry, accounts, amounts, st.just("r"), times, st.none() | disputes),
    st.builds(
        ReputationEntry,
        accounts,
        st.integers(min_value=-100, max_value=100),
        st.just("r"),
        times,
        st.none() | disputes,
    ),
)


def assert_conserved(state: LedgerState) -> None:
    accounts = state.accounts().values()
    stakes = sum(a.stake for a in accounts)
    unbonding = sum(a.unbonding_total for a in accounts)
    bonds = sum(d.bond for d in state.open_disputes.values())
    totals = state.totals
    assert totals.minted == (
        sum(a.balance for a in accounts)
        + stakes
        + unbonding
        + bonds
        + sum(state.held.values())
        + totals.burned
    )
    assert totals.staked == stakes + unbonding
    assert all(a.balance >= 0 and a.stake >= 0 for a in accounts)
    assert all(u.amount > 0 for a in accounts for u in a.unbonding)


@settings(max_examples=150, deadline=None)
@given(st.lists(entries, max_size=60))
def test_money_is_conserved_and_refused_entries_change_nothing(
    sequence: list[LedgerEntry],
) -> None:
    state = LedgerState()
    accepted: list[LedgerEntry] = []
    for entry in sequence:
        before = state.digest()
        refused: LedgerError | None = None
        try:
            state.apply(entry)
        except LedgerError as exc:
            refused = exc
        if refused is None:
            accepted.append(entry)
        else:
            assert refused.index == state.size
            assert state.digest() == before
        assert_conserved(state)
    # The accepted entries alone fold to the same state: a refusal left no trace.
    assert fold(accepted).digest() == state.digest()


@settings(max_examples=60, deadline=None)
@given(st.lists(entries, max_size=40), st.data())
def test_folding_twice_or_in_chunks_gives_the_same_digest(
    sequence: list[LedgerEntry], data: st.DataObject
) -> None:
    accepted: list[bytes] = []
    state = LedgerState()
    for entry in sequence:
        try:
            state.apply(entry)
        except LedgerError:
            continue
        accepted.append(entry.to_bytes())
    whole = fold(accepted)
    assert fold(accepted).digest() == whole.digest() == state.digest()
    cuts = sorted(
        data.draw(st.lists(st.integers(min_value=0, max_value=len(accepted)), max_size=4))
    )
    chunked = LedgerState()
    for lo, hi in zip([0, *cuts], [*cuts, len(accepted)], strict=True):
        chunked = fold(accepted[lo:hi], start=chunked)
    assert chunked.digest() == whole.digest()
    assert chunked.to_json() == whole.to_json()


@settings(max_examples=60, deadline=None)
@given(st.lists(entries, max_size=40))
def test_check_agrees_with_apply_and_a_copy_folds_like_the_original(
    sequence: list[LedgerEntry],
) -> None:
    state = LedgerState()
    for entry in sequence:
        trial = state.copy()
        before = state.digest()
        try:
            state.check(entry)
            would = True
        except LedgerError:
            would = False
        assert state.digest() == before
        try:
            trial.apply(entry)
            did = True
        except LedgerError:
            did = False
        assert would == did
        if did:
            state.apply(entry)
            assert state.digest() == trial.digest()
