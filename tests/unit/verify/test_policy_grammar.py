"""Policy grammar, canonical text, verdict JSON and decide() for spot, optimistic and tolerance."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.errors import DigestMismatchError, FormatError
from veriml.core.tensors import tensor_digest
from veriml.protocol.draw import Draw
from veriml.verify.policy import (
    DisputeRef,
    Policy,
    SpotReveal,
    Verdict,
    Winner,
    check_verdict,
    decide,
    spot_commitment,
)
from veriml.verify.tolerance import OutputBounds

A = {"y": Digest.of(b"a")}
B = {"y": Digest.of(b"b")}
SECRET = bytes(range(32))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("none", "none"),
        ("none,bitwise", "none"),
        ("none,tolerance", "none,tolerance"),
        ("quorum:3/2", "quorum:3/2"),
        ("quorum:03/2,bitwise", "quorum:3/2"),
        ("quorum:3/2,tolerance", "quorum:3/2,tolerance"),
        ("spot:0.1", "spot:0.1"),
        ("spot:0.10", "spot:0.1"),
        ("spot:0.05", "spot:0.05"),
        ("spot:0.0001", "spot:0.0001"),
        ("spot:1", "spot:1"),
        ("spot:1.0000", "spot:1"),
        ("spot:0.5,tolerance", "spot:0.5,tolerance"),
        ("optimistic:90s", "optimistic:90s"),
        ("optimistic:600s", "optimistic:10m"),
        ("optimistic:120m", "optimistic:2h"),
        ("optimistic:48h", "optimistic:2d"),
        ("optimistic:1s", "optimistic:1s"),
        ("optimistic:7d", "optimistic:7d"),
        ("optimistic:604800s", "optimistic:7d"),
    ],
)
def test_policies_have_one_canonical_text(text: str, canonical: str) -> None:
    policy = Policy.parse(text)
    assert str(policy) == canonical
    assert Policy.parse(canonical) == policy


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("spot:0", "(0, 1]"),
        ("spot:1.5", "(0, 1]"),
        ("spot:0.00001", "4 decimals"),
        ("spot:.5", "policy must be"),
        ("spot:1e-1", "policy must be"),
        ("optimistic:0s", "1s..7d"),
        ("optimistic:8d", "1s..7d"),
        ("optimistic:10", "policy must be"),
        ("optimistic:10w", "policy must be"),
        ("quorum:3/2,fuzzy", "bitwise or tolerance"),
        ("quorum:3/2,", "bitwise or tolerance"),
        ("quorum:17/2", "1 <= K <= N <= 16"),
        ("Quorum:3/2", "policy must be"),
        (" none", "policy must be"),
        ("none,bitwise,bitwise", "bitwise or tolerance"),
        ("spot:0.1" + "0" * 80, "short text"),
    ],
)
def test_malformed_policies_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(FormatError) as info:
        Policy.parse(text)
    assert says in info.value.diagnostics()


def test_policy_members() -> None:
    quorum = Policy.parse("quorum:5/3,tolerance")
    assert (quorum.kind, quorum.nodes, quorum.needed, quorum.compare) == (
        "quorum",
        5,
        3,
        "tolerance",
    )
    spot = Policy.parse("spot:0.05")
    assert (spot.nodes, spot.needed, spot.p_bp, spot.probability) == (1, 1, 500, Fraction(1, 20))
    assert Policy.parse("optimistic:10m").window == 600
    with pytest.raises(FormatError):
        Policy("spot", p_bp=0)
    with pytest.raises(FormatError):
        Policy("none", window=5)


@given(st.integers(1, 10_000), st.sampled_from(["bitwise", "tolerance"]))
def test_every_spot_probability_round_trips(p_bp: int, compare: str) -> None:
    policy = Policy.parse(f"spot:{p_bp / 10_000:.4f},{compare}")
    assert policy.p_bp == p_bp
    assert Policy.parse(str(policy)) == policy
    assert str(policy).startswith("spot:")
    assert not str(policy).split(",")[0].endswith(("0", "."))


@given(st.integers(1, 604_800))
def test_every_window_round_trips(seconds: int) -> None:
    policy = Policy.parse(f"optimistic:{seconds}s")
    assert policy.window == seconds
    assert Policy.parse(str(policy)) == policy


def test_old_verdicts_keep_their_bytes() -> None:
    verdict = decide(Policy.parse("quorum:3/2"), [("n1", "o1", A), ("n2", "o2", A)])
    assert set(verdict.to_json()) == {"policy", "mode", "outcome", "agreeing", "outputs"}
    # Positional construction, as existing callers do, still works.
    assert Verdict("none", "accepted", ("n1",), A) == decide(Policy("none"), [("n1", "o1", A)])


def test_new_verdict_members_round_trip() -> None:
    dispute = DisputeRef("d1", "n1", "n2", "challenger", 17, opened=12)
    verdict = decide(
        Policy.parse("spot:0.5"),
        [("n1", "o1", A), ("n2", "o2", B)],
        spot=SpotReveal(checked=True),
        disputes=[dispute],
        draw=Draw(3, SECRET),
    )
    obj = verdict.to_json()
    # The decision alone: the secret it follows from is the request's draw, revealed once.
    assert obj["spot"] == {"checked": True}
    assert obj["draw"] == {"epoch": 3, "secret": SECRET.hex()}
    assert obj["disputes"] == [
        {
            "id": "d1",
            "defendant": "n1",
            "challenger": "n2",
            "winner": "challenger",
            "log_index": 17,
            "opened": 12,
        }
    ]
    assert Verdict.from_json(obj) == verdict
    final = decide(
        Policy.parse("optimistic:1h"), [("n1", "o1", A)], final_after="2026-11-26T10:00:00Z"
    )
    assert final.to_json()["final_after"] == "2026-11-26T10:00:00Z"
    assert Verdict.from_json(final.to_json()) == final


@pytest.mark.parametrize(
    "mutation",
    [
        {"mode": "fuzzy"},
        {"spot": {"checked": "yes"}},
        {"spot": {"secret": "00" * 32, "checked": True}},  # the secret is the draw's
        {"draw": {"epoch": 0, "secret": "00"}},
        {"draw": {"epoch": -1, "secret": "00" * 32}},
        {"draw": {"secret": "00" * 32}},
        {"disputes": [DisputeRef("d", "a", "b", "none", 1).to_json() | {"opened": -1}]},
        {"disputes": [{"id": "d", "defendant": "a", "challenger": "b", "winner": "x"}]},
        {"disputes": [{"id": "d", "defendant": "a", "challenger": "b", "winner": "none"}]},
        {"disputes": "none"},
        {"final_after": 5},
    ],
)
def test_malformed_verdict_members_are_refused(mutation: dict[str, object]) -> None:
    obj = Verdict("none", "accepted", ("n1",), A).to_json() | mutation
    with pytest.raises(FormatError):
        Verdict.from_json(obj)


def test_spot_commitment_is_the_documented_hash() -> None:
    import hashlib

    expected = hashlib.sha256(b"veriml-spot-commit/v1\n" + SECRET).hexdigest()
    assert spot_commitment(SECRET).hex == expected
    with pytest.raises(FormatError):
        spot_commitment(b"short")


def _spot(
    checked: bool,
    *answers: tuple[str, str, dict[str, Digest]],
    disputes: tuple[DisputeRef, ...] = (),
) -> Verdict:
    policy = Policy.parse("spot:0.1")
    return decide(policy, list(answers), spot=SpotReveal(checked), disputes=disputes)


def test_spot_unchecked_accepts_the_primary_alone() -> None:
    verdict = _spot(False, ("n1", "o1", A))
    assert (verdict.outcome, verdict.agreeing, verdict.outputs) == ("accepted", ("n1",), A)


def test_spot_checked_and_agreeing_accepts_both() -> None:
    verdict = _spot(True, ("n1", "o1", A), ("n2", "o2", A))
    assert (verdict.outcome, verdict.agreeing) == ("accepted", ("n1", "n2"))


def test_a_checker_of_the_same_operator_does_not_count() -> None:
    verdict = _spot(True, ("n1", "o1", A), ("n2", "o1", B))
    assert (verdict.outcome, verdict.agreeing) == ("accepted", ("n1",))


@pytest.mark.parametrize(
    ("winner", "outcome", "agreeing", "outputs"),
    [
        ("defendant", "accepted", ("n1",), A),
        ("challenger", "accepted", ("n2",), B),
        ("none", "accepted", ("n1", "n2"), A),
        ("neither", "rejected", (), {}),
    ],
)
def test_a_spot_mismatch_is_decided_by_its_dispute(
    winner: Winner, outcome: str, agreeing: tuple[str, ...], outputs: dict[str, Digest]
) -> None:
    dispute = DisputeRef("d1", "n1", "n2", winner, 3)
    verdict = _spot(True, ("n1", "o1", A), ("n2", "o2", B), disputes=(dispute,))
    assert (verdict.outcome, verdict.agreeing, dict(verdict.outputs)) == (
        outcome,
        agreeing,
        outputs,
    )


def test_a_spot_mismatch_without_a_dispute_is_rejected() -> None:
    assert _spot(True, ("n1", "o1", A), ("n2", "o2", B)).outcome == "rejected"


def test_spot_needs_its_reveal_and_only_spot_has_one() -> None:
    with pytest.raises(FormatError):
        decide(Policy.parse("spot:0.1"), [("n1", "o1", A)])
    with pytest.raises(FormatError):
        decide(Policy.parse("none"), [("n1", "o1", A)], spot=SpotReveal(False))


@pytest.mark.parametrize("policy", ["none", "quorum:1/1", "spot:0.1", "optimistic:1h", "prefill"])
def test_every_policy_records_when_its_verdict_is_final(policy: str) -> None:
    # Every policy has a challenge window (the rules', or optimistic's own W), so every
    # verdict says when its answer is final.
    parsed = Policy.parse(policy)
    answers = [("n1", "o1", A), ("n2", "o2", A)]
    spot = SpotReveal(False) if parsed.kind == "spot" else None
    verdict = decide(parsed, answers, spot=spot, final_after="2026-11-26T10:00:00Z")
    assert Verdict.from_json(verdict.to_json()).final_after == "2026-11-26T10:00:00Z"


@pytest.mark.parametrize(
    ("winner", "outcome"),
    [("defendant", "rejected"), ("neither", "rejected"), ("challenger", "accepted")],
)
def test_quorum_dissent_disputes(winner: Winner, outcome: str) -> None:
    # n2 dissents; the coordinator disputes it (defendant) against an agreeing node.
    dispute = DisputeRef("d1", "n2", "n1", winner, 9)
    verdict = decide(
        Policy.parse("quorum:3/2"),
        [("n1", "o1", A), ("n2", "o2", B), ("n3", "o3", A)],
        disputes=[dispute],
    )
    assert verdict.outcome == outcome
    assert verdict.disputes == (dispute,)


def test_a_lost_challenge_against_an_optimistic_answer_rejects_it() -> None:
    lost = DisputeRef("d1", "n1", "watcher-account", "challenger", 5)
    verdict = decide(Policy.parse("optimistic:10m"), [("n1", "o1", A)], disputes=[lost])
    assert verdict.outcome == "rejected"
    won = DisputeRef("d1", "n1", "watcher-account", "defendant", 5)
    assert decide(Policy.parse("optimistic:10m"), [("n1", "o1", A)], disputes=[won]).outcome == (
        "accepted"
    )


def _tensor_answer(node: str, operator: str, value: np.ndarray) -> tuple:
    return (node, operator, {"y": tensor_digest(value)}), {"y": value}


def test_tolerance_quorum_groups_answers_within_bounds() -> None:
    base = np.linspace(-1, 1, 64, dtype=np.float32)
    close = np.nextafter(base, np.float32(np.inf))  # one ulp: within any float32 bound
    far = base * np.float32(1.001)
    answers, tensors = zip(
        *[
            _tensor_answer("n1", "o1", far),
            _tensor_answer("n2", "o2", base),
            _tensor_answer("n3", "o3", close),
        ],
        strict=True,
    )
    policy = Policy.parse("quorum:3/2,tolerance")
    verdict = decide(policy, answers, tensors=tensors, bounds=OutputBounds(1e-5))
    assert (verdict.outcome, verdict.agreeing, verdict.mode) == (
        "accepted",
        ("n2", "n3"),
        "tolerance",
    )
    assert verdict.outputs == answers[1][2]
    bitwise = decide(Policy.parse("quorum:3/2"), answers)
    assert bitwise.outcome == "rejected"
    check_verdict(verdict, decide(policy, answers, tensors=tensors, bounds=OutputBounds(1e-5)))


def test_tolerance_mode_checks_tensors_against_receipts() -> None:
    value = np.ones(4, dtype=np.float32)
    answer, _ = _tensor_answer("n1", "o1", value)
    with pytest.raises(DigestMismatchError):
        decide(
            Policy.parse("none,tolerance"),
            [answer],
            tensors=[{"y": value * 2}],
            bounds=OutputBounds(1e-5),
        )
    with pytest.raises(FormatError):
        decide(Policy.parse("none,tolerance"), [answer])
