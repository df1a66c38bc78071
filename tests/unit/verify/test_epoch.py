"""The ``epoch`` check: an answer's draw is from a logged epoch, current when its jobs ran
(verify/network.py; docs/verification.md, "Randomness")."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, VerificationError
from veriml.core.timestamps import format_time
from veriml.ledger.entries import BeaconEntry
from veriml.protocol.draw import Draw, beacon_commitment
from veriml.protocol.policy import Policy, Verdict
from veriml.verify.network import NetworkEvidence, Requirements, check_network

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
OPERATOR = "sha256:" + "ab" * 32
BEACON_INDEX = 3


def _beacon(epoch: int = 4, at: dt.datetime = T0) -> bytes:
    return BeaconEntry(epoch, beacon_commitment(bytes(32)), format_time(at)).to_bytes()


def _check(
    *,
    entries: dict[int, bytes] | None = None,
    beacon: int | None = BEACON_INDEX,
    epoch: int | None = 4,
    started: dt.datetime = T0 + dt.timedelta(minutes=5),
    **requirements: Any,
) -> tuple[str, ...]:
    verdict = Verdict(
        "none",
        "accepted",
        ("node-1",),
        {"y": Digest.of(b"y")},
        draw=None if epoch is None else Draw(epoch, bytes(32)),
    )
    cited = {BEACON_INDEX: _beacon()} if entries is None else entries
    evidence = NetworkEvidence(beacon=beacon)
    result = check_network(
        evidence,
        cited,
        entry_index=10,
        request_id="r-1",
        policy=Policy.parse("none"),
        verdict=verdict,
        operators={OPERATOR},
        receipts=(),
        started=format_time(started),
        finished=format_time(started + dt.timedelta(seconds=1)),
        model=None,
        ref=None,
        trust=Requirements(trusted_operators=frozenset({OPERATOR}), **requirements),
    )
    return result.checks


def test_a_draw_from_the_cited_epoch_that_began_before_the_jobs_passes() -> None:
    assert "epoch" in _check()


def test_a_verdict_without_a_draw_fails() -> None:
    # Every request is drawn: without the draw, who ran it (and its spot check) is unchecked.
    with pytest.raises(VerificationError) as info:
        _check(epoch=None)
    assert info.value.check == "epoch"


def test_an_answer_whose_draw_cites_no_beacon_entry_fails() -> None:
    with pytest.raises(VerificationError) as info:
        _check(beacon=None)
    assert info.value.check == "epoch"
    with pytest.raises(VerificationError) as info:
        _check(entries={})  # cited, but not carried in the evidence
    assert info.value.check == "epoch"


@pytest.mark.parametrize(
    "entries",
    [
        {BEACON_INDEX: _beacon(epoch=5)},  # another epoch's beacon
        {BEACON_INDEX: b'{"type":"deposit"}'},  # not a beacon entry at all
    ],
)
def test_a_cited_entry_that_does_not_begin_the_draws_epoch_fails(entries: dict[int, bytes]) -> None:
    with pytest.raises(VerificationError) as info:
        _check(entries=entries)
    assert info.value.check == "epoch"


def test_an_epoch_that_began_after_the_jobs_fails() -> None:
    with pytest.raises(VerificationError) as info:
        _check(started=T0 - dt.timedelta(minutes=5))
    assert info.value.check == "epoch"
    # A clock a few seconds apart is not an attack.
    assert "epoch" in _check(started=T0 - dt.timedelta(seconds=5))


def test_an_epoch_older_than_the_client_allows_fails() -> None:
    late = T0 + dt.timedelta(hours=1, seconds=1)
    with pytest.raises(VerificationError) as info:
        _check(started=late)
    assert info.value.check == "epoch"
    assert "epoch" in _check(started=late, max_epoch_age=7200)


def test_the_maximum_epoch_age_is_positive() -> None:
    with pytest.raises(FormatError):
        Requirements(max_epoch_age=0)


def test_the_beacon_index_round_trips_through_the_answer() -> None:
    evidence = NetworkEvidence(beacon=7)
    assert NetworkEvidence.from_answer(evidence.to_json()) == evidence
    with pytest.raises(FormatError):
        NetworkEvidence.from_answer({"beacon": "7"})
