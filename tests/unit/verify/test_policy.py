from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.verify.policy import Policy, Verdict, check_verdict, decide

A = {"y": Digest.of(b"a")}
B = {"y": Digest.of(b"b")}


@pytest.mark.parametrize("text", ["none", "quorum:1/1", "quorum:3/2", "quorum:16/16"])
def test_policies_round_trip_as_text(text: str) -> None:
    assert str(Policy.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "quorum",
        "quorum:3",
        "quorum:2/3",
        "quorum:0/0",
        "quorum:17/1",
        "spot:0.1x",
        "quorum:a/b",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(FormatError):
        Policy.parse(text)


def test_quorum_accepts_when_k_distinct_operators_agree() -> None:
    verdict = decide(
        Policy.parse("quorum:3/2"), [("n1", "o1", A), ("n2", "o2", B), ("n3", "o3", A)]
    )
    assert verdict.outcome == "accepted"
    assert verdict.agreeing == ("n1", "n3")
    assert verdict.outputs == A


def test_one_operator_running_many_nodes_counts_once() -> None:
    verdict = decide(
        Policy.parse("quorum:3/2"), [("n1", "o1", A), ("n2", "o1", A), ("n3", "o2", B)]
    )
    assert verdict.outcome == "rejected"


def test_no_answers_is_rejected() -> None:
    assert decide(Policy.parse("none"), []).outcome == "rejected"


@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=6))
def test_verdict_round_trips_and_rechecks(values: list[str]) -> None:
    answers = [(f"n{i}", f"o{i}", {"y": Digest.of(v.encode())}) for i, v in enumerate(values)]
    policy = Policy("quorum", len(values), max(1, len(values) // 2 + 1))
    verdict = decide(policy, answers)
    assert Verdict.from_json(verdict.to_json()) == verdict
    if verdict.outcome == "accepted":
        check_verdict(verdict, decide(policy, answers))
    else:
        with pytest.raises(VerificationError):
            check_verdict(verdict, decide(policy, answers))


def test_a_claimed_verdict_that_does_not_follow_is_refused() -> None:
    policy = Policy.parse("quorum:3/2")
    honest = decide(policy, [("n1", "o1", A), ("n2", "o2", B), ("n3", "o3", B)])
    forged = Verdict(honest.policy, "accepted", ("n1",), A)
    with pytest.raises(VerificationError) as info:
        check_verdict(forged, honest)
    assert info.value.check == "verdict"
