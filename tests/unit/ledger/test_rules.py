"""The ledger's rules as logged in every state entry (veriml.ledger.rules): integer amounts and
basis points, so the settlement gives the same amounts everywhere; exactly the documented
members, so a state entry's bytes are a function of the rules."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.canonical import canonicalize
from veriml.core.errors import FormatError
from veriml.ledger import Rules

ADMIN = "sha256:" + "0" * 64


def test_the_defaults_charge_nothing_but_require_stake_bonds_and_a_delay() -> None:
    rules = Rules(admin=ADMIN)
    assert rules.to_json() == {
        "admin": ADMIN,
        "min_stake": 100,
        "min_reputation": -1000,
        "unstake_delay": 3600.0,
        "slash_bp": 5000,
        "reward_bp": 5000,
        "challenge_bond": 10,
        "fee_per_job": 0,
        "challenge_window": 86_400.0,
        "dispute_timeout": 60.0,
    }
    # Issue 10: identity costs something (min_stake > 0), challenges cost something (bond > 0).
    assert rules.min_stake > 0
    assert rules.challenge_bond > 0
    assert rules.free  # no fee: inference is free by rule, and earns no reputation
    assert (rules.slash_fraction, rules.reward_fraction) == (Fraction(1, 2), Fraction(1, 2))


def test_rules_round_trip_through_json_and_have_exactly_their_members() -> None:
    rules = Rules(admin=ADMIN, min_stake=7, fee_per_job=2, unstake_delay=0.5)
    obj = rules.to_json()
    assert Rules.from_json(obj) == rules
    assert Rules.from_json(json.loads(canonicalize(obj))) == rules
    assert not rules.free
    with pytest.raises(FormatError, match="exactly the documented members"):
        Rules.from_json({k: v for k, v in obj.items() if k != "min_stake"})
    with pytest.raises(FormatError, match="exactly the documented members"):
        Rules.from_json(obj | {"max_stake": 1})
    with pytest.raises(FormatError):
        Rules.from_json([obj])


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"admin": ""}, id="admin-empty"),
        pytest.param({"admin": 7}, id="admin-int"),
        pytest.param({"min_stake": -1}, id="min-stake-negative"),
        pytest.param({"min_stake": 1.0}, id="min-stake-float"),
        pytest.param({"min_stake": True}, id="min-stake-bool"),
        pytest.param({"min_stake": 2**53}, id="min-stake-2^53"),
        pytest.param({"slash_bp": 10_001}, id="slash-over-100%"),
        pytest.param({"reward_bp": 10_001}, id="reward-over-100%"),
        pytest.param({"fee_per_job": -1}, id="fee-negative"),
        pytest.param({"min_reputation": 0.5}, id="min-reputation-float"),
        pytest.param({"unstake_delay": -1}, id="delay-negative"),
        pytest.param({"unstake_delay": math.inf}, id="delay-inf"),
        pytest.param({"unstake_delay": math.nan}, id="delay-nan"),
        pytest.param({"unstake_delay": 10**9 + 1}, id="delay-too-long"),
        pytest.param({"unstake_delay": "1h"}, id="delay-text"),
        pytest.param({"challenge_window": -1.0}, id="window-negative"),
        pytest.param({"dispute_timeout": 0}, id="timeout-zero"),
    ],
)
def test_rules_that_no_implementation_could_apply_alike_are_refused(
    changes: dict[str, Any],
) -> None:
    with pytest.raises(FormatError):
        Rules(**({"admin": ADMIN} | changes))


def test_the_settings_fractions_round_to_basis_points() -> None:
    rules = Rules.from_fractions(admin=ADMIN, slash_fraction=0.33335, reward_fraction=1.0)
    assert (rules.slash_bp, rules.reward_bp) == (3334, 10_000)
    with pytest.raises(FormatError):
        Rules.from_fractions(admin=ADMIN, slash_fraction=1.5, reward_fraction=0.5)


@given(st.integers(0, 10_000), st.integers(0, 2**53 - 1))
def test_a_slash_fraction_in_basis_points_is_exact_for_every_stake(bp: int, stake: int) -> None:
    # The settlement floors stake × fraction; with a Fraction it is the integer division.
    rules = Rules(admin=ADMIN, slash_bp=bp)
    assert math.floor(stake * rules.slash_fraction) == stake * bp // 10_000
