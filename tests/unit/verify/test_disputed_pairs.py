"""Which disagreements become disputes: one rule, the one both coordinator services apply."""

from __future__ import annotations

import pytest

from veriml.core.digest import Digest
from veriml.verify.policy import (
    MAX_DISSENT_DISPUTES,
    Policy,
    SpotReveal,
    decide,
    disputed_pairs,
)

A = {"y": Digest.of(b"a")}
B = {"y": Digest.of(b"b")}


def _spot(checked: bool) -> SpotReveal:
    return SpotReveal(checked)


def test_a_checked_spot_answer_the_checker_contradicts_puts_the_primary_on_trial() -> None:
    policy = Policy.parse("spot:0.5")
    answers = [("n1", "op1", A), ("n2", "op2", B)]
    verdict = decide(policy, answers, spot=_spot(True))
    assert verdict.outcome == "rejected"
    assert disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers]) == [(0, 1)]


@pytest.mark.parametrize(
    ("checked", "second"), [(True, A), (False, B)], ids=["agreeing", "unchecked"]
)
def test_a_spot_answer_no_checker_contradicts_opens_no_dispute(
    checked: bool, second: dict[str, Digest]
) -> None:
    policy = Policy.parse("spot:0.5")
    answers = [("n1", "op1", A), ("n2", "op2", second)]
    verdict = decide(policy, answers, spot=_spot(checked))
    assert disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers]) == []


def test_each_dissenting_operator_of_an_accepted_quorum_faces_the_first_agreeing_answer() -> None:
    policy = Policy.parse("quorum:4/2")
    answers = [("n1", "op1", B), ("n2", "op2", A), ("n3", "op3", A), ("n4", "op4", B)]
    verdict = decide(policy, answers)
    assert verdict.agreeing == ("n1", "n4")
    assert disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers]) == [(1, 0), (2, 0)]


def test_a_dissenting_answer_of_an_agreeing_operator_is_not_disputed() -> None:
    policy = Policy.parse("quorum:3/2")
    answers = [("n1", "op1", A), ("n2", "op2", A), ("n3", "op1", B)]
    verdict = decide(policy, answers)
    assert disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers]) == []


def test_a_quorum_opens_at_most_max_dissent_disputes() -> None:
    policy = Policy.parse("quorum:16/2")
    answers = [("n0", "op0", A), ("n1", "op1", A)]
    answers += [(f"d{i}", f"dop{i}", {"y": Digest.of(bytes([i]))}) for i in range(14)]
    verdict = decide(policy, answers)
    pairs = disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers])
    assert pairs == [(i, 0) for i in range(2, 2 + MAX_DISSENT_DISPUTES)]


@pytest.mark.parametrize("text", ["none", "optimistic:1h", "prefill", "quorum:3/3"])
def test_other_policies_and_rejected_quorums_open_no_dispute(text: str) -> None:
    policy = Policy.parse(text)
    answers = [("n1", "op1", A), ("n2", "op2", B), ("n3", "op3", A)]
    verdict = decide(policy, answers)
    assert disputed_pairs(policy, verdict, [(n, o) for n, o, _ in answers]) == []
