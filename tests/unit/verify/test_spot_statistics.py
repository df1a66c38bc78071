"""Spot checks happen with probability P, are fixed once a request's draw is, and cannot be
predicted by the node.

The decision is a function of the request's draw secret alone (``SHA-256("veriml-spot/v2\\n"
|| r)``); ``r`` is what the epoch key, committed in the log before the epoch, gives the
request id (:mod:`veriml.protocol.draw`). Nothing the node signs enters it, so a node has
nothing to grind, and a coordinator that re-dispatches a request draws the same decision.

Bounds are 4.5 binomial standard deviations: with the seeded generators below the tests are
deterministic, and for fresh seeds a false failure has probability below 1e-5 per check.
"""

from __future__ import annotations

import hashlib
import math
import random

import pytest

from veriml.core.errors import DigestMismatchError, FormatError, VerificationError
from veriml.protocol.draw import Draw, draw_secret
from veriml.verify.policy import Policy, SpotReveal, check_spot, spot_checked, spot_commitment

SIGMAS = 4.5


def _assert_binomial(hits: int, trials: int, p: float) -> None:
    sigma = math.sqrt(trials * p * (1 - p))
    assert abs(hits - trials * p) <= SIGMAS * sigma, (hits, trials, p)


@pytest.mark.parametrize("p", ["0.05", "0.1", "0.5"])
def test_the_checked_fraction_is_p(p: str) -> None:
    policy = Policy.parse(f"spot:{p}")
    rng = random.Random(f"fraction-{p}")
    trials = 20_000
    hits = sum(spot_checked(policy, rng.randbytes(32)) for _ in range(trials))
    _assert_binomial(hits, trials, float(policy.probability))


def test_p_one_always_checks() -> None:
    rng = random.Random("always")
    policy = Policy.parse("spot:1")
    assert all(spot_checked(policy, rng.randbytes(32)) for _ in range(1000))


@pytest.mark.parametrize("p", ["0.0001", "0.1", "0.5", "0.9999"])
def test_the_decision_is_the_documented_hash_of_the_secret(p: str) -> None:
    # docs/verification.md: checked when int(h[0:8]) * 10000 < P_bp * 2^64, h the tagged hash.
    rng = random.Random(f"formula-{p}")
    policy = Policy.parse(f"spot:{p}")
    for _ in range(2_000):
        secret = rng.randbytes(32)
        h = hashlib.sha256(b"veriml-spot/v2\n" + secret).digest()
        expected = int.from_bytes(h[:8], "big") * 10_000 < policy.p_bp * 2**64
        assert spot_checked(policy, secret) is expected


def test_over_the_request_ids_of_one_epoch_the_checked_fraction_is_p() -> None:
    # The coordinator committed to its epoch key before the epoch; clients pick the ids. The
    # draws the key gives the ids are checked with probability P.
    rng = random.Random("epoch")
    key = rng.randbytes(32)
    policy = Policy.parse("spot:0.1")
    trials = 20_000
    hits = sum(spot_checked(policy, draw_secret(key, f"req-{i}")) for i in range(trials))
    _assert_binomial(hits, trials, 0.1)


def test_re_dispatching_a_request_draws_the_same_decision() -> None:
    # One id under one epoch key is one secret, so one decision, however often the
    # coordinator sends the request out again; only another committed key would draw anew.
    rng = random.Random("redispatch")
    policy = Policy.parse("spot:0.5")
    key, other = rng.randbytes(32), rng.randbytes(32)
    decisions = [
        {spot_checked(policy, draw_secret(key, f"req-{i}")) for _ in range(5)} for i in range(200)
    ]
    assert all(len(d) == 1 for d in decisions)
    same = sum(
        spot_checked(policy, draw_secret(key, f"req-{i}"))
        == spot_checked(policy, draw_secret(other, f"req-{i}"))
        for i in range(4_000)
    )
    _assert_binomial(same, 4_000, 0.5)  # another key's decisions are independent of these


def test_the_commitment_does_not_predict_the_decision() -> None:
    # The node sees only commitment = SHA-256(tag || secret). A predictor reading any of its
    # first 64 bits is right no more often than the base rate: P(checked | bit) stays P.
    rng = random.Random("predictor")
    policy = Policy.parse("spot:0.5")
    trials = 20_000
    samples = []
    for _ in range(trials):
        secret = rng.randbytes(32)
        samples.append((spot_commitment(secret).raw, spot_checked(policy, secret)))
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
        any(spot_checked(policy, rng.randbytes(32)) for _ in range(cheats)) for _ in range(trials)
    )
    expected = 1 - (1 - 0.1) ** cheats  # 0.878
    _assert_binomial(detected, trials, expected)


def test_only_spot_policies_have_checks() -> None:
    rng = random.Random("kinds")
    with pytest.raises(FormatError):
        spot_checked(Policy.parse("none"), rng.randbytes(32))
    with pytest.raises(FormatError):
        spot_checked(Policy.parse("spot:0.1"), b"short")


def test_anyone_can_recheck_a_revealed_spot_decision() -> None:
    rng = random.Random("recheck")
    policy = Policy.parse("spot:0.5")
    draw = Draw(0, rng.randbytes(32))
    commitment = spot_commitment(draw.secret)  # what the primary node signed
    checked = spot_checked(policy, draw.secret)
    check_spot(policy, SpotReveal(checked), draw, commitment)
    with pytest.raises(VerificationError) as flipped:
        check_spot(policy, SpotReveal(not checked), draw, commitment)
    assert flipped.value.check == "spot"
    with pytest.raises(DigestMismatchError):  # another secret than the one committed to
        check_spot(policy, SpotReveal(checked), Draw(0, rng.randbytes(32)), commitment)
    with pytest.raises(DigestMismatchError):  # a receipt that committed to nothing
        check_spot(policy, SpotReveal(checked), draw, None)
    with pytest.raises(VerificationError) as hidden:  # a verdict that reveals no draw
        check_spot(policy, SpotReveal(checked), None, commitment)
    assert hidden.value.check == "spot"
