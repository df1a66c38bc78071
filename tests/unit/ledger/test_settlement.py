"""The settlement rule (veriml.ledger.settlement.settle): who pays what after a verdict. One
pure function; the fold refuses any settlement but the one it returns (tests/unit/ledger/
test_state.py), so these cases are what every auditor accepts."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.ledger import (
    DisputeVerdictEntry,
    Parties,
    ReputationEntry,
    RewardEntry,
    Rules,
    SlashEntry,
    settle,
)
from veriml.ledger.settlement import LOST, WON

AT = "2026-11-26T10:00:00.000000Z"
RULES = Rules(admin="sha256:" + "0" * 64)  # slash 50 %, reward 50 % of the slash
OPERATORS = {"node-a": "acme", "node-a2": "acme", "node-b": "bolt"}
STAKES = {"acme": 1000, "bolt": 600, "watcher": 40}


def settled(
    winner: Any, parties: Parties, rules: Rules = RULES, stakes: dict[str, int] = STAKES
) -> list[Any]:
    return settle(
        DisputeVerdictEntry("d", winner, "referee", AT),
        parties,
        rules,
        bonding=lambda who: OPERATORS.get(who, who),
        slashable=lambda account: stakes.get(account, 0),
    )


def rep(account: str, delta: int) -> ReputationEntry:
    reason = "dispute-won" if delta > 0 else "dispute-lost"
    return ReputationEntry(account, delta, reason, AT, dispute="d")


OUTSIDER = Parties("node-a", "watcher")  # an account challenges a node
NODES = Parties("node-a", "node-b", "node-b")  # a node challenges a node


def test_won_and_lost_are_plus_one_and_minus_one_hundred() -> None:
    assert (WON, LOST) == (1, -100)


def test_a_challenger_win_slashes_the_defendants_operator_and_pays_the_challenger_from_it() -> None:
    assert settled("challenger", OUTSIDER) == [
        SlashEntry("acme", 500, 250, "d", AT),
        RewardEntry("watcher", 250, "challenge", AT, dispute="d"),
        rep("watcher", WON),
        rep("node-a", LOST),
    ]


def test_a_defendant_win_slashes_an_outside_challengers_own_stake_and_burns_it_all() -> None:
    assert settled("defendant", OUTSIDER) == [
        SlashEntry("watcher", 20, 20, "d", AT),
        rep("node-a", WON),
        rep("watcher", LOST),
    ]


def test_a_challenging_node_answers_with_its_operators_stake_and_its_own_reputation() -> None:
    assert settled("defendant", NODES) == [
        SlashEntry("bolt", 300, 300, "d", AT),
        rep("node-a", WON),
        rep("node-b", LOST),
    ]
    won = settled("challenger", NODES)
    assert won[1] == RewardEntry("node-b", 250, "challenge", AT, dispute="d")
    assert won[2] == rep("node-b", WON)


def test_neither_slashes_both_without_a_reward_and_none_settles_nothing() -> None:
    assert settled("neither", NODES) == [
        SlashEntry("acme", 500, 500, "d", AT),
        SlashEntry("bolt", 300, 300, "d", AT),
        rep("node-a", LOST),
        rep("node-b", LOST),
    ]
    assert settled("none", NODES) == []
    assert settled("none", OUTSIDER) == []


def test_two_losing_nodes_of_one_operator_are_slashed_once_and_each_loses_reputation() -> None:
    same_operator = Parties("node-a", "node-a2", "node-a2")
    assert settled("neither", same_operator) == [
        SlashEntry("acme", 500, 500, "d", AT),
        rep("node-a", LOST),
        rep("node-a2", LOST),
    ]


def test_a_conviction_is_logged_even_when_there_is_no_stake_to_slash() -> None:
    broke = Parties("node-x", "watcher")  # an unbound node, no stake anywhere
    assert settled("challenger", broke) == [
        SlashEntry("node-x", 0, 0, "d", AT),  # no reward entry: nothing was paid
        rep("watcher", WON),
        rep("node-x", LOST),
    ]


def test_amounts_are_floored_in_basis_points() -> None:
    rules = dataclasses.replace(RULES, slash_bp=3333, reward_bp=2500)
    slash, reward = settled("challenger", OUTSIDER, rules, {"acme": 1001})[:2]
    assert (slash.amount, slash.burned, reward.amount) == (333, 250, 83)


@pytest.mark.parametrize("winner", ["defendant", "challenger", "none", "neither"])
def test_every_settlement_entry_carries_the_verdicts_time_and_dispute(winner: str) -> None:
    for entry in settled(winner, NODES):
        assert (entry.at, entry.dispute) == (AT, "d")


@given(
    st.sampled_from(["defendant", "challenger", "none", "neither"]),
    st.sampled_from([OUTSIDER, NODES, Parties("node-a", "node-a2", "node-a2")]),
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.dictionaries(st.sampled_from(["acme", "bolt", "watcher"]), st.integers(0, 2**40)),
)
def test_a_settlement_pays_out_no_more_than_it_slashes(
    winner: str, parties: Parties, slash_bp: int, reward_bp: int, stakes: dict[str, int]
) -> None:
    rules = dataclasses.replace(RULES, slash_bp=slash_bp, reward_bp=reward_bp)
    entries = settled(winner, parties, rules, stakes)
    slashes = [e for e in entries if isinstance(e, SlashEntry)]
    rewards = [e for e in entries if isinstance(e, RewardEntry)]
    assert sum(r.amount for r in rewards) == sum(s.amount - s.burned for s in slashes)
    assert len({s.account for s in slashes}) == len(slashes)  # one slash per account
    assert all(s.amount <= stakes.get(s.account, 0) for s in slashes)
    assert not rewards or winner == "challenger"
