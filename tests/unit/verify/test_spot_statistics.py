"""Spot checks happen with probability P and cannot be predicted by the node.

Bounds are 4.5 binomial standard deviations: with the seeded generators below the tests are
deterministic, and for fresh seeds a false failure has probability below 1e-5 per check.
"""

from __future__ import annotations

import math
import random

import pytest

from veriml.core.dsse import INTOTO_PAYLOAD_TYPE, Envelope
from veriml.core.errors import DigestMismatch, FormatError, VerificationError
from veriml.verify.policy import Policy, SpotReveal, check_spot, spot_checked, spot_commitment

SIGMAS = 4.5


def _receipt(rng: random.Random) -> Envelope:
    """A stand-in receipt: what the decision reads is the DSSE payload, which the node writes
    (its timestamps, request id and outputs make every payload different)."""
    return Envelope(INTOTO_PAYLOAD_TYPE, rng.randbytes(96))


def _assert_binomial(hits: int, trials: int, p: float) -> None:
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= SIGMAS * sigma, (hits, trials, p)


@pytest.mark.parametrize("p", ["0.05", "0.1", "0.5"])
def test_the_checked_fraction_is_p(p: str) -> None:
    policy = Policy.parse(f"spot:{p}")
    rng = random.Random(f"fraction-{p}")
    trials = 20_000
    hits = sum(spot_checked(policy, rng.randbytes(32), _receipt(rng)) for _ in range(trials))
    _assert_binomial(hits, trials, float(policy.probability))


def test_p_one_always_checks() -> None:
    rng = random.Random("always")
    policy = Policy.parse("spot:1")
    assert all(spot_checked(policy, rng.randbytes(32), _receipt(rng)) for _ in range(1000))


def test_for_a_fixed_receipt_the_decision_follows_the_secret_alone() -> None:
    # Whatever receipt the node signs, the coordinator's secret makes it checked with
    # probability P: the node has nothing to choose that avoids a check.
    rng = random.Random("fixed-receipt")
    policy = Policy.parse("spot:0.1")
    for _ in range(3):
        receipt = _receipt(rng)
        hits = sum(spot_checked(policy, rng.randbytes(32), receipt) for _ in range(5_000))
        _assert_binomial(hits, 5_000, 0.1)


def test_for_a_fixed_secret_no_receipt_is_safer_than_another() -> None:
    # The node writes the payload; with the secret fixed, payloads it might grind through are
    # still checked with probability P (it cannot evaluate the decision to pick a safe one).
    rng = random.Random("fixed-secret")
    policy = Policy.parse("spot:0.1")
    secret = rng.randbytes(32)
    hits = sum(spot_checked(policy, secret, _receipt(rng)) for _ in range(20_000))
    _assert_binomial(hits, 20_000, 0.1)


def test_the_commitment_does_not_predict_the_decision() -> None:
    # The node sees only commitment = SHA-256(tag || secret). A predictor reading any of its
    # first 64 bits is right no more often than the base rate: P(checked | bit) stays P.
    rng = random.Random("predictor")
    policy = Policy.parse("spot:0.5")
    receipt = _receipt(rng)
    trials = 20_000
    samples = []
    for _ in range(trials):
        secret = rng.randbytes(32)
        samples.append((spot_commitment(secret).raw, spot_checked(policy, secret, receipt)))
    for bit in range(64):
        correct = sum(((c[bit // 8] >> (bit % 8)) & 1) == checked for c, checked in samples)
        _assert_binomial(correct, trials, 0.5)
    # The best guess without the secret is a constant, scoring the base rate.
    _assert_binomial(sum(checked for _, checked in samples), trials, 0.5)


def test_cheats_escape_all_checks_with_probability_one_minus_p_to_the_n() -> None:
    # A node that cheats on n jobs is caught unless every one of them goes unchecked.
    rng = random.Random("detection")
    policy = Policy.parse("spot:0.1")
    cheats, trials = 20, 2_000
    detected = sum(
        any(spot_checked(policy, rng.randbytes(32), _receipt(rng)) for _ in range(cheats))
        for _ in range(trials)
    )
    expected = 1 - (1 - 0.1) ** cheats  # 0.878
    _assert_binomial(detected, trials, expected)


def test_only_spot_policies_have_checks() -> None:
    rng = random.Random("kinds")
    with pytest.raises(FormatError):
        spot_checked(Policy.parse("none"), rng.randbytes(32), _receipt(rng))
    with pytest.raises(FormatError):
        spot_checked(Policy.parse("spot:0.1"), b"short", _receipt(rng))


def test_anyone_can_recheck_a_revealed_spot_decision() -> None:
    rng = random.Random("recheck")
    policy = Policy.parse("spot:0.5")
    secret, receipt = rng.randbytes(32), _receipt(rng)
    commitment = spot_commitment(secret)
    checked = spot_checked(policy, secret, receipt)
    check_spot(policy, SpotReveal(secret, checked), receipt, commitment)
    with pytest.raises(VerificationError) as flipped:
        check_spot(policy, SpotReveal(secret, not checked), receipt, commitment)
    assert flipped.value.check == "spot"
    with pytest.raises(DigestMismatch):
        check_spot(policy, SpotReveal(rng.randbytes(32), checked), receipt, commitment)
    with pytest.raises(DigestMismatch):
        check_spot(policy, SpotReveal(secret, checked), receipt, None)
